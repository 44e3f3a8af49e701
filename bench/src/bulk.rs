//! Items 1 and 2: one connection's bulk throughput, offloaded (guest buffers → data ring →
//! device engine → TAP → kernel peer, and back) and in the host stack (harness engine →
//! pair 0 → device NIC path → TAP), with the host-side CPU (the thread that plays the host:
//! host stack or miniport) and the device process's CPU over the measured window.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chimney_abi::data_io::DataRequest;
use chimney_wire::PEER_IPV4;

use crate::error::Result;
use crate::peer::{Mode, Peer};
use crate::progress::Progress;
use crate::pump::Pump;
use crate::rig::{Rig, RigOptions};
use crate::sys::{Spent, Window};

/// Slow start and the first ring round trips are left out of the window.
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Host → peer.
    Tx,
    /// Peer → host.
    Rx,
}

#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub bytes: u64,
    pub spent: Spent,
}

impl Measured {
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.spent.wall.as_secs_f64().max(1e-9)
    }
    fn gib(&self) -> f64 {
        self.bytes as f64 / (1u64 << 30) as f64
    }
    /// Host-thread CPU seconds per GiB moved.
    pub fn host_cpu_per_gib(&self) -> f64 {
        self.spent.host_cpu.as_secs_f64() / self.gib().max(1e-12)
    }
    pub fn device_cpu_per_gib(&self) -> f64 {
        self.spent.device_cpu.as_secs_f64() / self.gib().max(1e-12)
    }
}

fn peer_addr(port: u16) -> SocketAddr {
    SocketAddr::new(PEER_IPV4.into(), port)
}

/// One offloaded connection moving data in `dir` for `dur`.
pub fn offloaded(
    opts: &RigOptions,
    dir: Direction,
    dur: Duration,
    p: &Progress,
) -> Result<Measured> {
    let mut rig = Rig::start(opts)?;
    let port = 5401;
    let mode = match dir {
        Direction::Tx => Mode::Sink { conns: 1 },
        Direction::Rx => Mode::Source {
            chunk: 1 << 20,
            nodelay: false,
        },
    };
    let peer = Peer::start(&rig.bed.ns, peer_addr(port), mode)?;
    let c = rig.connect(peer_addr(port))?;
    let (handles, _) = rig.stack.offload(&mut rig.session, c, 0x100)?;
    let tcp = handles[0];
    peer.go();
    let mut pump = Pump::default();
    let slots = opts.data.tx_slots;
    let chunk = rig.data.max_data();
    let mut send = DataRequest::Send {
        handle: tcp,
        request_id: 0,
        data: vec![0x5a; chunk],
    };
    // 16 posted 64 KiB buffers (1 MiB posted; the device's receive window is 512 KiB).
    let posts = 16usize.min(slots);
    let cap = 64 << 10;
    let start = Instant::now();
    let mut window: Option<(Window, u64)> = None;
    let mut last_pair0 = Instant::now();
    loop {
        match dir {
            Direction::Tx => {
                while pump.sends_in_flight < slots {
                    pump.send(&mut rig, &mut send)?;
                }
            }
            Direction::Rx => {
                while pump.posted < posts {
                    pump.post(&mut rig, tcp, cap)?;
                }
                pump.return_indications(&mut rig)?;
            }
        }
        pump.collect(&mut rig, Duration::from_millis(5))?;
        pump.send_done.clear();
        pump.recv_done.clear();
        if last_pair0.elapsed() > Duration::from_millis(20) {
            pump.service_pair0(&mut rig)?;
            last_pair0 = Instant::now();
        }
        let moved = match dir {
            Direction::Tx => peer.bytes(),
            Direction::Rx => pump.recv_bytes,
        };
        match &window {
            None if start.elapsed() >= WARMUP => {
                window = Some((Window::open(rig.device_pid())?, moved));
            }
            Some((w, from)) if w.wall_elapsed() >= dur => {
                let spent = w.close()?;
                let m = Measured {
                    bytes: moved - from,
                    spent,
                };
                peer.stop()?;
                return Ok(m);
            }
            Some((w, from)) => p.set(format!(
                "offloaded {dir:?}: {:.0} MB/s, {:.1}/{:.0} s",
                (moved - from) as f64 / w.wall_elapsed().as_secs_f64().max(1e-3) / 1e6,
                w.wall_elapsed().as_secs_f64(),
                dur.as_secs_f64()
            )),
            None => {}
        }
    }
}

/// One connection in the host stack (no offload) moving data in `dir` for `dur`.
pub fn host_stack(
    opts: &RigOptions,
    dir: Direction,
    dur: Duration,
    p: &Progress,
) -> Result<Measured> {
    let mut rig = Rig::start(opts)?;
    let port = 5402;
    let mode = match dir {
        Direction::Tx => Mode::Sink { conns: 1 },
        Direction::Rx => Mode::Source {
            chunk: 1 << 20,
            nodelay: false,
        },
    };
    let peer = Peer::start(&rig.bed.ns, peer_addr(port), mode)?;
    let c = rig.connect(peer_addr(port))?;
    peer.go();
    let chunk = vec![0x5a_u8; 64 << 10];
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0u64;
    let start = Instant::now();
    let mut window: Option<(Window, u64)> = None;
    loop {
        let mut blocked = true;
        if dir == Direction::Tx {
            while let Ok(n) = rig.stack.engine.send(c, &chunk) {
                if n == 0 {
                    break;
                }
                blocked = false;
                if n < chunk.len() {
                    break;
                }
            }
        }
        let wait = if blocked {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        rig.stack.poll(wait)?;
        while let Ok(n) = rig.stack.engine.recv(c, &mut buf) {
            if n == 0 {
                break;
            }
            received += n as u64;
        }
        let moved = match dir {
            Direction::Tx => peer.bytes(),
            Direction::Rx => received,
        };
        match &window {
            None if start.elapsed() >= WARMUP => {
                window = Some((Window::open(rig.device_pid())?, moved));
            }
            Some((w, from)) if w.wall_elapsed() >= dur => {
                let spent = w.close()?;
                let m = Measured {
                    bytes: moved - from,
                    spent,
                };
                peer.stop()?;
                return Ok(m);
            }
            Some((w, from)) => p.set(format!(
                "host stack {dir:?}: {:.0} MB/s, {:.1}/{:.0} s",
                (moved - from) as f64 / w.wall_elapsed().as_secs_f64().max(1e-3) / 1e6,
                w.wall_elapsed().as_secs_f64(),
                dur.as_secs_f64()
            )),
            None => {}
        }
    }
}
