//! Item 4: small operations over the data rings, 64-byte payloads, one offloaded
//! connection. Send+completion: 64-byte SEND requests kept `tx_slots` deep, each counted when
//! its completion (after the peer's ACK, C-142) comes back. Receive+return: the kernel peer
//! writes 64 bytes per write() with TCP_NODELAY, nothing is posted, every indication the
//! device makes is returned (RECEIVE_RETURN). Rates are per second of wall time and per
//! second of device CPU (ops per device core).

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

pub const PAYLOAD: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct Ops {
    pub ops: u64,
    pub bytes: u64,
    pub spent: Spent,
}

impl Ops {
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.spent.wall.as_secs_f64().max(1e-9)
    }
    pub fn per_device_core_sec(&self) -> f64 {
        self.ops as f64 / self.spent.device_cpu.as_secs_f64().max(1e-9)
    }
    pub fn bytes_per_op(&self) -> f64 {
        self.bytes as f64 / self.ops.max(1) as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SendComplete,
    ReceiveReturn,
}

pub fn run(opts: &RigOptions, kind: Kind, dur: Duration, p: &Progress) -> Result<Ops> {
    let mut rig = Rig::start(opts)?;
    let addr = SocketAddr::new(PEER_IPV4.into(), 5403);
    let mode = match kind {
        Kind::SendComplete => Mode::Sink { conns: 1 },
        Kind::ReceiveReturn => Mode::Source {
            chunk: PAYLOAD,
            nodelay: true,
        },
    };
    let peer = Peer::start(&rig.bed.ns, addr, mode)?;
    let c = rig.connect(addr)?;
    let (handles, _) = rig.stack.offload(&mut rig.session, c, 0x200)?;
    peer.go();
    let tcp = handles[0];
    let mut pump = Pump::default();
    let mut send = DataRequest::Send {
        handle: tcp,
        request_id: 0,
        data: vec![0x64; PAYLOAD],
    };
    let slots = opts.data.tx_slots;
    let start = Instant::now();
    let mut window: Option<(Window, u64, u64)> = None;
    let mut last_pair0 = Instant::now();
    loop {
        match kind {
            Kind::SendComplete => {
                while pump.sends_in_flight < slots {
                    pump.send(&mut rig, &mut send)?;
                }
            }
            Kind::ReceiveReturn => pump.return_indications(&mut rig)?,
        }
        pump.collect(&mut rig, Duration::from_millis(2))?;
        pump.send_done.clear();
        pump.recv_done.clear();
        if last_pair0.elapsed() > Duration::from_millis(20) {
            pump.service_pair0(&mut rig)?;
            last_pair0 = Instant::now();
        }
        let (ops, bytes) = match kind {
            Kind::SendComplete => (pump.send_ops, pump.sent_bytes),
            Kind::ReceiveReturn => (pump.recv_ops, pump.recv_bytes),
        };
        match &window {
            None if start.elapsed() >= Duration::from_millis(300) => {
                window = Some((Window::open(rig.device_pid())?, ops, bytes));
            }
            Some((w, o, b)) if w.wall_elapsed() >= dur => {
                let r = Ops {
                    ops: ops - o,
                    bytes: bytes - b,
                    spent: w.close()?,
                };
                peer.stop()?;
                return Ok(r);
            }
            Some((w, o, _)) => p.set(format!(
                "{kind:?} 64 B: {:.0} ops/s",
                (ops - o) as f64 / w.wall_elapsed().as_secs_f64().max(1e-3)
            )),
            None => {}
        }
    }
}
