//! Item 5: total throughput and device CPU per segment with N active offloaded connections.
//! The host stack opens N connections to one kernel peer (a sink reading all of them with
//! epoll), offloads them in bulk trees, then keeps the data ring's tx slots full of 16 KiB
//! sends, handing each freed slot to the next connection in turn, so every connection moves
//! data during the window (at most `tx_slots` have a send outstanding at one instant).
//! "Segment" = 1448 payload bytes (one MSS); the device sends TSO super-frames, so the
//! TAP frame count is reported alongside.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chimney_abi::data_io::DataRequest;
use chimney_wire::PEER_IPV4;

use crate::error::{BenchError, Result};
use crate::peer::{Mode, Peer};
use crate::progress::Progress;
use crate::pump::Pump;
use crate::rig::{Rig, RigOptions};
use crate::sys::{Spent, Window};

pub const SEND: usize = 16 << 10;
pub const MSS: f64 = 1448.0;

#[derive(Debug, Clone, Copy)]
pub struct Scaled {
    pub conns: usize,
    pub bytes: u64,
    pub frames: u64,
    /// Connections that completed at least one send in the window.
    pub active: usize,
    pub spent: Spent,
}

impl Scaled {
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.spent.wall.as_secs_f64().max(1e-9)
    }
    /// Device CPU nanoseconds per MSS-sized segment of payload.
    pub fn device_ns_per_segment(&self) -> f64 {
        self.spent.device_cpu.as_secs_f64() * 1e9 / (self.bytes as f64 / MSS).max(1.0)
    }
}

pub fn run(opts: &RigOptions, n: usize, dur: Duration, p: &Progress) -> Result<Scaled> {
    let mut o = opts.clone();
    // Thousands of host-stack connections: small socket buffers (they only connect).
    o.host_buffers = 64 << 10;
    o.device_args
        .extend(["--max-tcp".into(), (n + 16).to_string()]);
    o.data.tx_slots = 128;
    o.data.tx_slot_len = SEND + 256;
    let mut rig = Rig::start(&o)?;
    crate::peer::tune_namespace(&rig.bed.ns)?;
    let addr = SocketAddr::new(PEER_IPV4.into(), 5404);
    let peer = Peer::start(&rig.bed.ns, addr, Mode::Sink { conns: n })?;
    // Open in batches so the kernel's SYN queue and our pair-0 ring keep up.
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        let k = 256.min(n - conns.len());
        let now = rig.stack.now();
        let batch: Vec<_> = (0..k)
            .map(|_| rig.stack.engine.connect(now, addr, None))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| BenchError::Engine(format!("connect: {e}")))?;
        rig.wait_established(&batch, Duration::from_secs(60))?;
        conns.extend(batch);
        p.set(format!("scaling {n}: {} connected", conns.len()));
    }
    let mut handles = Vec::with_capacity(n);
    for (i, chunk) in conns.chunks(4096).enumerate() {
        let (tcp, _, _) =
            rig.stack
                .offload_many(&mut rig.session, chunk, 0x10_0000 * (i as u64 + 1))?;
        handles.extend(tcp);
        p.set(format!("scaling {n}: {} offloaded", handles.len()));
    }
    let mut pump = Pump::default();
    let mut next: VecDeque<usize> = (0..n).collect();
    let mut reqs: Vec<DataRequest> = handles
        .iter()
        .map(|h| DataRequest::Send {
            handle: *h,
            request_id: 0,
            data: vec![0x5c; SEND],
        })
        .collect();
    let index: std::collections::HashMap<_, _> =
        handles.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    // Sends outstanding per connection: the slots shared out, at least one.
    let mut busy = vec![0usize; n];
    let cap = (o.data.tx_slots / n).max(1);
    let mut moved_in_window = vec![false; n];
    let slots = o.data.tx_slots;
    let start = Instant::now();
    let mut window: Option<(Window, u64, u64)> = None;
    let mut last_pair0 = Instant::now();
    loop {
        while pump.sends_in_flight < slots {
            let Some(i) = next.pop_front() else { break };
            if busy[i] >= cap {
                next.push_front(i);
                break;
            }
            busy[i] += 1;
            pump.send(&mut rig, &mut reqs[i])?;
            next.push_back(i);
        }
        pump.collect(&mut rig, Duration::from_millis(2))?;
        for h in pump.send_done.drain(..) {
            if let Some(&i) = index.get(&h) {
                busy[i] = busy[i].saturating_sub(1);
                if window.is_some() {
                    moved_in_window[i] = true;
                }
            }
        }
        if last_pair0.elapsed() > Duration::from_millis(20) {
            pump.service_pair0(&mut rig)?;
            last_pair0 = Instant::now();
        }
        let moved = peer.bytes();
        match &window {
            None if start.elapsed() >= Duration::from_millis(500) => {
                window = Some((
                    Window::open(rig.device_pid())?,
                    moved,
                    rig.tap_stat("rx_packets")?,
                ));
            }
            Some((w, from, frames)) if w.wall_elapsed() >= dur => {
                let spent = w.close()?;
                let frames = rig.tap_stat("rx_packets")?.saturating_sub(*frames);
                peer.stop()?;
                return Ok(Scaled {
                    conns: n,
                    bytes: moved - from,
                    frames,
                    active: moved_in_window.iter().filter(|m| **m).count(),
                    spent,
                });
            }
            Some((w, from, _)) => p.set(format!(
                "scaling {n}: {:.0} MB/s, {:.1}/{:.0} s",
                (moved - from) as f64 / w.wall_elapsed().as_secs_f64().max(1e-3) / 1e6,
                w.wall_elapsed().as_secs_f64(),
                dur.as_secs_f64()
            )),
            None => {}
        }
    }
}
