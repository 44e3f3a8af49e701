//! The guest agent's scenario runner: the same scenario files as `chimney-harness run`
//! (`crate::scenario::format`), run from inside the guest on the raw rings of the device
//! ([`Machine`]) with the Linux peer reached through the peer service
//! (`crate::qemu::peer`).
//!
//! Supported steps: `open` (active), `send`, `receive` (posted buffers; indications are
//! accepted and returned), `offload_connection`, `terminate` (of connections: back into
//! the host stack), `disconnect`, `peer` (close, reset, stop/resume reading),
//! `expect_events` (disconnect, abort, retrieve on a connection). Every other step is
//! reported as unsupported — never passed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chimney_abi::data_io::{DataRecord, DataRequest, DataRxKind};
use chimney_abi::event::tcp_event;
use chimney_abi::{DeviceHandle, NdisStatus};
use chimney_miniport::Platform;
use chimney_netstack::{ConnHandle, ConnectionExport, Event as NetEvent};
use chimney_wire::{PEER_IPV4, PEER_IPV6};
use sha2::{Digest, Sha256};

use super::machine::{MResult, Machine};
use super::report::{GuestOutcome, GuestScenario, GuestStep};
use crate::qemu::peer::CONTROL_PORT;
use crate::scenario::format::{
    DisconnectKind, EventKind, Family, OpenMode, PeerAction, ReceiveMode, Scenario, Step,
};
use crate::scenario::host::{hex, stream_bytes};

/// A step that makes no progress for this long fails (a bound against hangs; not a
/// performance check).
pub const STALL_LIMIT: Duration = Duration::from_secs(30);

/// Marker in step errors that means the device stopped answering: the agent ends the run.
pub const DEVICE_GONE: &str = "device gone?";

/// Data moved per send request.
const SEND_CHUNK: usize = 60 << 10;
const SENDS_IN_FLIGHT: usize = 24;
const RECV_BUF: usize = 64 << 10;
const RECVS_POSTED: usize = 8;

/// The control connection to the peer service.
pub struct PeerLink {
    h: ConnHandle,
    inbox: Vec<u8>,
}

impl PeerLink {
    /// Connect through the host stack on pair 0 to the peer service (IPv4).
    pub fn connect<P: Platform>(m: &mut Machine<P>) -> MResult<PeerLink> {
        let now = m.now();
        let h = m
            .engine
            .connect(now, SocketAddr::new(PEER_IPV4.into(), CONTROL_PORT), None)
            .map_err(|e| format!("peer service: connect: {e}"))?;
        wait_established(m, h, "peer service")?;
        Ok(PeerLink {
            h,
            inbox: Vec::new(),
        })
    }

    /// One request line, one answer line (`ERR …` becomes an error).
    pub fn request<P: Platform>(
        &mut self,
        m: &mut Machine<P>,
        line: &str,
        limit: Duration,
    ) -> MResult<String> {
        let mut out = format!("{line}\n").into_bytes();
        let until = Instant::now() + limit;
        loop {
            if !out.is_empty() {
                let k = m.engine.send(self.h, &out).unwrap_or(0);
                out.drain(..k);
            }
            let mut buf = [0u8; 4096];
            while let Ok(k) = m.engine.recv(self.h, &mut buf) {
                if k == 0 {
                    break;
                }
                self.inbox.extend_from_slice(&buf[..k]);
            }
            if let Some(nl) = self.inbox.iter().position(|b| *b == b'\n') {
                let answer: Vec<u8> = self.inbox.drain(..=nl).collect();
                let answer = String::from_utf8_lossy(&answer).trim().to_string();
                return match answer.strip_prefix("ERR ") {
                    Some(e) => Err(format!("peer: {e}")),
                    None => Ok(answer),
                };
            }
            if Instant::now() > until {
                return Err(format!(
                    "peer service: no answer to `{line}` within {limit:?} ({DEVICE_GONE})"
                ));
            }
            m.poll(Duration::from_millis(2))?;
        }
    }
}

fn wait_established<P: Platform>(m: &mut Machine<P>, h: ConnHandle, what: &str) -> MResult<()> {
    let until = Instant::now() + STALL_LIMIT;
    loop {
        if m.engine.state(h).ok() == Some(chimney_netstack::TcpConnectionState::Established) {
            return Ok(());
        }
        while let Some(e) = m.engine.poll_event() {
            if matches!(e, NetEvent::Reset(c) | NetEvent::TimedOut(c) if c == h) {
                return Err(format!("{what}: connection refused or timed out ({e:?})"));
            }
        }
        if Instant::now() > until {
            return Err(format!(
                "{what}: not established within {STALL_LIMIT:?} ({DEVICE_GONE})"
            ));
        }
        m.poll(Duration::from_millis(2))?;
    }
}

struct Conn {
    port: u16,
    h: Option<ConnHandle>,
    offloaded: Option<([DeviceHandle; 3], ConnectionExport)>,
    /// An abort/disconnect event ended it in the device.
    ended_in_device: bool,
    out_seed: u64,
    sent: u64,
    sent_sha: Sha256,
    peer_seed: u64,
    peer_asked: u64,
}

/// One scenario's state.
struct Run<'a, P: Platform> {
    m: &'a mut Machine<P>,
    peer: &'a mut PeerLink,
    conns: HashMap<String, Conn>,
    seed: u64,
    ctx: u64,
}

enum Res {
    Pass(String),
    Fail(String),
    Unsupported(String),
}

const UNSUPPORTED: &str = "not supported by the guest agent (it runs the host-stack and \
     data-path steps; control-plane scenarios run in-process with `chimney-harness run`)";

/// Run one scenario; `progress(step index, step name)` is called before each step.
pub fn run_scenario<P: Platform>(
    m: &mut Machine<P>,
    peer: &mut PeerLink,
    sc: &Scenario,
    seed: u64,
    mut progress: impl FnMut(usize, &str),
) -> GuestScenario {
    let t0 = Instant::now();
    let mut steps: Vec<GuestStep> = sc
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| GuestStep {
            index: i,
            name: s.name().to_string(),
            outcome: GuestOutcome::NotRun,
            detail: String::new(),
            seconds: 0.0,
        })
        .collect();
    let mut outcome = GuestOutcome::Passed;
    if sc.device.policy.is_some() || sc.device.max_tcp.is_some() || sc.device.max_paths.is_some() {
        // The device of a QEMU run is started once, with default settings.
        if let Some(s) = steps.first_mut() {
            s.outcome = GuestOutcome::Unsupported;
            s.detail = "the scenario's [device] settings need their own device; a QEMU run \
                        starts one device with default settings"
                .into();
        }
        outcome = GuestOutcome::Unsupported;
    } else {
        let mut run = Run {
            m,
            peer,
            conns: HashMap::new(),
            seed,
            ctx: 0x1000,
        };
        for (i, step) in sc.steps.iter().enumerate() {
            progress(i, step.name());
            let st = Instant::now();
            let r = run.step(step);
            let s = &mut steps[i];
            s.seconds = st.elapsed().as_secs_f64();
            match r {
                Res::Pass(d) => {
                    s.outcome = GuestOutcome::Passed;
                    s.detail = d;
                }
                Res::Fail(d) => {
                    s.outcome = GuestOutcome::Failed;
                    s.detail = d;
                    outcome = GuestOutcome::Failed;
                    break;
                }
                Res::Unsupported(d) => {
                    s.outcome = GuestOutcome::Unsupported;
                    s.detail = d;
                    outcome = GuestOutcome::Unsupported;
                    break;
                }
            }
        }
        run.cleanup();
    }
    GuestScenario {
        name: sc.name.clone(),
        outcome,
        steps,
        seconds: t0.elapsed().as_secs_f64(),
        seed,
    }
}

fn seeded(seed: u64, name: &str) -> u64 {
    seed ^ name
        .bytes()
        .fold(0u64, |a, b| a.rotate_left(5) ^ u64::from(b))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl<P: Platform> Run<'_, P> {
    fn step(&mut self, step: &Step) -> Res {
        let r = match step {
            Step::Open {
                name,
                family,
                mode,
                port,
                ..
            } => {
                if *family == Family::Both {
                    return Res::Unsupported("`open` needs family ipv4 or ipv6".into());
                }
                self.open(
                    name,
                    *family == Family::Ipv6,
                    *mode == OpenMode::Active,
                    *port,
                )
            }
            Step::OffloadConnection { conn, expect, .. } => {
                if expect.is_some_and(|e| e.0 != NdisStatus::SUCCESS) {
                    return Res::Unsupported(
                        "`offload_connection` expecting a failure status".into(),
                    );
                }
                self.offload(conn)
            }
            Step::Send {
                conn,
                bytes,
                pattern,
                ..
            } => {
                if pattern != "seeded" {
                    return Res::Unsupported(format!("send pattern `{pattern}`"));
                }
                self.send(conn, *bytes)
            }
            Step::Receive {
                conn,
                bytes,
                mode,
                sha256,
                ..
            } => {
                let offloaded = self.conns.get(conn).is_some_and(|c| c.offloaded.is_some());
                if offloaded && *mode == ReceiveMode::Indicated {
                    return Res::Unsupported(
                        "`receive` with mode = \"indicated\" on an offloaded connection: the agent \
                         drives the data ring directly and posts buffers (no NDIS indication \
                         handler)"
                            .into(),
                    );
                }
                self.receive(conn, *bytes, sha256.as_deref())
            }
            Step::Terminate { objects, .. } => self.terminate(&objects.0),
            Step::Disconnect {
                conn,
                kind,
                peer_sha256,
                ..
            } => self.disconnect(conn, *kind, peer_sha256.as_deref()),
            Step::Peer { conn, action, .. } => {
                let verb = match action {
                    PeerAction::Close => "CLOSE",
                    PeerAction::Reset => "RESET",
                    PeerAction::StopReading => "STOP",
                    PeerAction::ResumeReading => "RESUME",
                    PeerAction::GoSilent => {
                        return Res::Unsupported("`peer` action go_silent".into())
                    }
                };
                self.peer_cmd(conn, verb)
            }
            Step::ExpectEvents {
                kind,
                reason,
                objects,
                count,
                ..
            } => {
                let code = match kind {
                    EventKind::Disconnect => tcp_event::DISCONNECT,
                    EventKind::Abort => tcp_event::ABORT,
                    EventKind::Retrieve => tcp_event::RETRIEVE,
                    other => {
                        return Res::Unsupported(format!(
                            "`expect_events` of kind {other:?} (adapter-wide events)"
                        ))
                    }
                };
                let Some(objects) = objects else {
                    return Res::Unsupported(format!(
                        "`expect_events` with count = {count:?} and no objects"
                    ));
                };
                self.expect_events(&objects.0, code, reason.map(|r| r as u32))
            }
            Step::ExpectNoEvents { wait_ms, .. } => self.expect_no_events(*wait_ms),
            other => return Res::Unsupported(format!("`{}` is {UNSUPPORTED}", other.name())),
        };
        match r {
            Ok(d) => Res::Pass(d),
            Err(e) => Res::Fail(e),
        }
    }

    fn conn(&mut self, name: &str) -> MResult<&mut Conn> {
        self.conns
            .get_mut(name)
            .ok_or_else(|| format!("no connection `{name}` (open it first)"))
    }

    fn open(&mut self, name: &str, v6: bool, active: bool, port: u16) -> MResult<String> {
        if self.conns.contains_key(name) {
            return Err(format!("connection `{name}` is already open"));
        }
        let out_seed = seeded(self.seed, name);
        let peer_seed = out_seed ^ 0x5555_aaaa_5555_aaaa;
        let fam = if v6 { 6 } else { 4 };
        let h = if active {
            self.peer.request(
                self.m,
                &format!("LISTEN {port} {fam} {peer_seed}"),
                STALL_LIMIT,
            )?;
            let ip: IpAddr = if v6 {
                PEER_IPV6.into()
            } else {
                PEER_IPV4.into()
            };
            let now = self.m.now();
            let h = self
                .m
                .engine
                .connect(now, SocketAddr::new(ip, port), None)
                .map_err(|e| format!("connect: {e}"))?;
            wait_established(self.m, h, name)?;
            h
        } else {
            // Passive: the host stack listens, the peer connects to the guest.
            self.m.engine.listen(port);
            self.peer.request(
                self.m,
                &format!("CONNECT {port} {fam} {peer_seed}"),
                STALL_LIMIT,
            )?;
            let until = Instant::now() + STALL_LIMIT;
            let h = loop {
                let mut got = None;
                let mut keep = Vec::new();
                while let Some(e) = self.m.engine.poll_event() {
                    match e {
                        NetEvent::Accepted { port: p, conn } if p == port => got = Some(conn),
                        other => keep.push(other),
                    }
                }
                if let Some(h) = got {
                    break h;
                }
                if Instant::now() > until {
                    self.m.engine.unlisten(port);
                    return Err(format!(
                        "passive open on port {port}: the peer's connection did not arrive \
                         within {STALL_LIMIT:?}"
                    ));
                }
                self.m.poll(Duration::from_millis(2))?;
            };
            self.m.engine.unlisten(port);
            h
        };
        let t = self.m.engine.tuple(h).map_err(|e| e.to_string())?;
        self.conns.insert(
            name.to_string(),
            Conn {
                port,
                h: Some(h),
                offloaded: None,
                ended_in_device: false,
                out_seed,
                sent: 0,
                sent_sha: Sha256::new(),
                peer_seed,
                peer_asked: 0,
            },
        );
        Ok(format!(
            "{} {} → {} established in the host stack",
            if active { "active" } else { "passive" },
            t.local,
            t.remote
        ))
    }

    fn offload(&mut self, name: &str) -> MResult<String> {
        let h = self
            .conn(name)?
            .h
            .ok_or_else(|| format!("`{name}` is not in the host stack"))?;
        // C-070: a synchronized connection; everything sent is acknowledged first.
        let until = Instant::now() + STALL_LIMIT;
        while !self.m.engine.tcb(h).is_ok_and(|t| t.snd_una == t.snd_max) {
            if Instant::now() > until {
                return Err(format!(
                    "`{name}`: sent data not acknowledged within {STALL_LIMIT:?}"
                ));
            }
            self.m.poll(Duration::from_millis(2))?;
        }
        self.ctx += 0x10;
        let (handles, export) = self.m.offload(h, self.ctx)?;
        let c = self.conn(name)?;
        c.h = None;
        let (s, b) = (export.tcp.send_data.len(), export.tcp.buffered_data.len());
        c.offloaded = Some((handles, export));
        Ok(format!(
            "offloaded as TCP {:#x} ({s} bytes unacknowledged, {b} bytes buffered went along)",
            handles[0].0
        ))
    }

    fn next_out(c: &mut Conn, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        stream_bytes(c.out_seed, c.sent, &mut v);
        c.sent_sha.update(&v);
        c.sent += n as u64;
        v
    }

    fn send(&mut self, name: &str, bytes: u64) -> MResult<String> {
        let c = self.conn(name)?;
        if let Some(h) = c.h {
            let mut left = bytes;
            let mut pending: Vec<u8> = Vec::new();
            let mut last = Instant::now();
            while left > 0 || !pending.is_empty() {
                if pending.is_empty() {
                    let n = left.min(SEND_CHUNK as u64) as usize;
                    let c = self.conn(name)?;
                    pending = Self::next_out(c, n);
                    left -= n as u64;
                }
                let k = self.m.engine.send(h, &pending).unwrap_or(0);
                if k > 0 {
                    pending.drain(..k);
                    last = Instant::now();
                } else if last.elapsed() > STALL_LIMIT {
                    return Err(format!(
                        "host-stack send on `{name}` made no progress for {STALL_LIMIT:?}"
                    ));
                } else {
                    self.m.poll(Duration::from_millis(1))?;
                }
            }
            self.m.poll(Duration::ZERO)?;
            return Ok(format!("{bytes} bytes queued in the host stack"));
        }
        let tcp = c
            .offloaded
            .as_ref()
            .map(|o| o.0[0])
            .ok_or_else(|| format!("`{name}` is neither in the host stack nor offloaded"))?;
        // Through the data ring; complete only when acknowledged (C-142).
        let mut left = bytes;
        let mut in_flight = 0usize;
        let mut done = 0u64;
        let mut last = Instant::now();
        while left > 0 || in_flight > 0 {
            while left > 0 && in_flight < SENDS_IN_FLIGHT {
                let n = left.min(SEND_CHUNK as u64) as usize;
                let data = Self::next_out(self.conn(name)?, n);
                let id = self.m.id();
                self.m.submit(DataRequest::Send {
                    handle: tcp,
                    request_id: id,
                    data,
                })?;
                left -= n as u64;
                in_flight += 1;
            }
            self.m.poll_data(Duration::from_millis(5))?;
            for r in self.take_records(tcp) {
                match (r.kind, r.status) {
                    (DataRxKind::SendComplete, NdisStatus::SUCCESS) => {
                        in_flight -= 1;
                        done += u64::from(r.bytes);
                        last = Instant::now();
                    }
                    (DataRxKind::SendComplete, st) => {
                        return Err(format!(
                            "send request {} completed with {st}, expected SUCCESS",
                            r.request_id
                        ))
                    }
                    _ => self.m.records.push(r),
                }
            }
            if last.elapsed() > STALL_LIMIT {
                return Err(format!(
                    "offloaded send on `{name}`: {done} of {bytes} bytes acknowledged, no \
                     send completion for {STALL_LIMIT:?} ({DEVICE_GONE})"
                ));
            }
        }
        Ok(format!(
            "{bytes} bytes sent through the data ring, all completed (acknowledged)"
        ))
    }

    /// Records of `tcp` (others stay queued).
    fn take_records(&mut self, tcp: DeviceHandle) -> Vec<DataRecord> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.m.records)
            .into_iter()
            .partition(|r| r.handle == Some(tcp));
        self.m.records = rest;
        mine
    }

    fn receive(&mut self, name: &str, bytes: u64, sha256: Option<&str>) -> MResult<String> {
        let c = self.conn(name)?;
        // The bytes the peer is about to write and their hash.
        let mut want = Sha256::new();
        let mut chunk = vec![0u8; 64 << 10];
        let mut at = c.peer_asked;
        while at < c.peer_asked + bytes {
            let k = (c.peer_asked + bytes - at).min(chunk.len() as u64) as usize;
            stream_bytes(c.peer_seed, at, &mut chunk[..k]);
            want.update(&chunk[..k]);
            at += k as u64;
        }
        c.peer_asked += bytes;
        let want = match sha256 {
            None | Some("peer") => hex(&want.finalize()),
            Some(h) => h.to_ascii_lowercase(),
        };
        let (port, h, off) = (c.port, c.h, c.offloaded.as_ref().map(|o| o.0[0]));
        let mut got = Sha256::new();
        let mut n = 0u64;
        let mut last = Instant::now();
        if let Some(h) = h {
            self.peer
                .request(self.m, &format!("WRITE {port} {bytes}"), STALL_LIMIT)?;
            let mut buf = vec![0u8; 64 << 10];
            while n < bytes {
                let k = self
                    .m
                    .engine
                    .recv(h, &mut buf[..(bytes - n).min(64 << 10) as usize])
                    .unwrap_or(0);
                if k > 0 {
                    got.update(&buf[..k]);
                    n += k as u64;
                    last = Instant::now();
                } else if last.elapsed() > STALL_LIMIT {
                    return Err(format!(
                        "host-stack receive on `{name}`: {n} of {bytes} bytes, nothing for \
                         {STALL_LIMIT:?}"
                    ));
                } else {
                    self.m.poll(Duration::from_millis(1))?;
                }
            }
        } else {
            let tcp =
                off.ok_or_else(|| format!("`{name}` is neither in the host stack nor offloaded"))?;
            // Buffers first, then the peer writes (C-158: data goes into posted buffers).
            // (request id, capacity) of the buffers at the device.
            let mut open: Vec<(u64, u64)> = Vec::new();
            let mut asked = false;
            while n < bytes {
                let mut posted: u64 = open.iter().map(|(_, c)| c).sum();
                while open.len() < RECVS_POSTED && n + posted < bytes {
                    let cap = (bytes - n - posted).min(RECV_BUF as u64);
                    let id = self.m.id();
                    self.m.submit(DataRequest::PostReceive {
                        handle: tcp,
                        request_id: id,
                        capacity: cap as u32,
                    })?;
                    posted += cap;
                    open.push((id, cap));
                }
                if !asked {
                    self.peer
                        .request(self.m, &format!("WRITE {port} {bytes}"), STALL_LIMIT)?;
                    asked = true;
                }
                self.m.poll_data(Duration::from_millis(5))?;
                for r in self.take_records(tcp) {
                    match (r.kind, r.status) {
                        (DataRxKind::ReceiveComplete, NdisStatus::SUCCESS) => {
                            // A partly filled buffer (push) is replaced by a new posting.
                            open.retain(|(id, _)| *id != r.request_id);
                            got.update(&r.data);
                            n += r.data.len() as u64;
                            last = Instant::now();
                        }
                        (DataRxKind::ReceiveIndicate, _) => {
                            got.update(&r.data);
                            n += r.data.len() as u64;
                            last = Instant::now();
                            self.m.submit(DataRequest::ReceiveReturn {
                                handle: tcp,
                                indication_id: r.request_id,
                            })?;
                        }
                        (DataRxKind::ReceiveComplete, st) => {
                            return Err(format!(
                                "posted receive {} completed with {st} after {n} of {bytes} \
                                 bytes",
                                r.request_id
                            ))
                        }
                        _ => self.m.records.push(r),
                    }
                }
                if last.elapsed() > STALL_LIMIT {
                    return Err(format!(
                        "offloaded receive on `{name}`: {n} of {bytes} bytes, nothing for \
                         {STALL_LIMIT:?} ({DEVICE_GONE})"
                    ));
                }
            }
        }
        let seen = hex(&got.finalize());
        if n != bytes || seen != want {
            return Err(format!(
                "received {n} bytes with SHA-256 {seen}, expected {bytes} bytes with SHA-256 {want}"
            ));
        }
        Ok(format!(
            "{bytes} bytes {}, SHA-256 {seen} as the peer sent",
            if off.is_some() {
                "into posted buffers"
            } else {
                "through the host stack"
            }
        ))
    }

    fn terminate(&mut self, sel: &[String]) -> MResult<String> {
        let names: Vec<String> = if sel.iter().any(|s| s == "all") {
            let mut v: Vec<String> = self
                .conns
                .iter()
                .filter(|(_, c)| c.offloaded.is_some())
                .map(|(n, _)| n.clone())
                .collect();
            v.sort();
            v
        } else {
            sel.to_vec()
        };
        let mut out = Vec::new();
        for name in names {
            let c = self.conn(&name)?;
            let (handles, export) = c.offloaded.take().ok_or_else(|| {
                format!("`{name}` is not offloaded (only connections terminate here)")
            })?;
            let import = !c.ended_in_device;
            let h = self.m.upload(handles, &export, import)?;
            let c = self.conn(&name)?;
            c.h = h;
            out.push(if h.is_some() {
                format!("`{name}` terminated and continued in the host stack")
            } else {
                format!("`{name}` terminated (it had ended in the device)")
            });
        }
        Ok(out.join("; "))
    }

    fn peer_result(&mut self, port: u16) -> MResult<(u64, String)> {
        let a = self.peer.request(
            self.m,
            &format!("RESULT {port} {}", STALL_LIMIT.as_secs()),
            STALL_LIMIT + Duration::from_secs(10),
        )?;
        let w: Vec<&str> = a.split_whitespace().collect();
        match w.as_slice() {
            ["RESULT", n, sha] => Ok((
                n.parse().map_err(|_| format!("peer answer `{a}`"))?,
                sha.to_string(),
            )),
            _ => Err(format!(
                "peer answered `{a}`, expected RESULT <bytes> <sha256>"
            )),
        }
    }

    fn disconnect(
        &mut self,
        name: &str,
        kind: DisconnectKind,
        peer_sha256: Option<&str>,
    ) -> MResult<String> {
        let abortive = kind == DisconnectKind::Abortive;
        let c = self.conn(name)?;
        let port = c.port;
        if let Some(h) = c.h {
            let r = if abortive {
                self.m.engine.abort(h)
            } else {
                self.m.engine.close(h)
            };
            r.map_err(|e| format!("close: {e}"))?;
            self.m.poll(Duration::ZERO)?;
        } else {
            let tcp =
                c.offloaded.as_ref().map(|o| o.0[0]).ok_or_else(|| {
                    format!("`{name}` is neither in the host stack nor offloaded")
                })?;
            let id = self.m.id();
            self.m.submit(DataRequest::Disconnect {
                handle: tcp,
                request_id: id,
                abortive,
            })?;
            let until = Instant::now() + STALL_LIMIT;
            'wait: loop {
                self.m.poll_data(Duration::from_millis(5))?;
                for r in self.take_records(tcp) {
                    if r.kind == DataRxKind::DisconnectComplete && r.request_id == id {
                        if r.status != NdisStatus::SUCCESS {
                            return Err(format!("disconnect completed with {}", r.status));
                        }
                        break 'wait;
                    }
                    self.m.records.push(r);
                }
                if Instant::now() > until {
                    return Err(format!(
                        "no disconnect completion within {STALL_LIMIT:?} ({DEVICE_GONE})"
                    ));
                }
            }
        }
        let c = self.conn(name)?;
        let sent = c.sent;
        let sent_sha = hex(&c.sent_sha.clone().finalize());
        let r = self.peer_result(port);
        if abortive {
            return match r {
                Err(e) if e.contains("reset") => Ok(format!("aborted; the peer saw: {e}")),
                Ok((n, _)) => Err(format!(
                    "abortive close: expected the peer to see a reset, seen EOF after {n} bytes"
                )),
                Err(e) => Err(format!(
                    "abortive close: expected a reset at the peer, seen: {e}"
                )),
            };
        }
        let (n, sha) = r?;
        let want = peer_sha256.map_or(sent_sha, |s| s.to_ascii_lowercase());
        if n != sent || sha != want {
            return Err(format!(
                "peer received {n} bytes with SHA-256 {sha}, expected {sent} bytes with SHA-256 \
                 {want}"
            ));
        }
        Ok(format!(
            "closed; the peer received {n} bytes, SHA-256 {sha} as sent"
        ))
    }

    fn peer_cmd(&mut self, name: &str, verb: &str) -> MResult<String> {
        let port = self.conn(name)?.port;
        self.peer
            .request(self.m, &format!("{verb} {port}"), STALL_LIMIT)?;
        Ok(format!("peer: {verb} on port {port}"))
    }

    fn expect_events(&mut self, sel: &[String], code: u32, reason: Option<u32>) -> MResult<String> {
        let mut out = Vec::new();
        for name in sel {
            let tcp = self
                .conn(name)?
                .offloaded
                .as_ref()
                .map(|o| o.0[0])
                .ok_or_else(|| format!("`{name}` is not offloaded: no events can come for it"))?;
            let until = Instant::now() + STALL_LIMIT;
            loop {
                if let Some(i) = self.m.events.iter().position(|e| {
                    e.handle == Some(tcp) && e.code == code && reason.is_none_or(|r| e.info == r)
                }) {
                    let e = self.m.events.remove(i);
                    if code == tcp_event::ABORT || code == tcp_event::DISCONNECT {
                        // After an abort the connection lives on only in the device's table.
                        if code == tcp_event::ABORT {
                            self.conn(name)?.ended_in_device = true;
                        }
                    }
                    out.push(format!("`{name}`: event code {} info {}", e.code, e.info));
                    break;
                }
                if Instant::now() > until {
                    let seen: Vec<String> = self
                        .m
                        .events
                        .iter()
                        .map(|e| format!("code {} handle {:?}", e.code, e.handle))
                        .collect();
                    return Err(format!(
                        "no event code {code} for `{name}` within {STALL_LIMIT:?}; pending: [{}]",
                        seen.join(", ")
                    ));
                }
                self.m.poll(Duration::from_millis(2))?;
            }
        }
        Ok(out.join("; "))
    }

    fn expect_no_events(&mut self, wait_ms: u32) -> MResult<String> {
        let until = Instant::now() + Duration::from_millis(u64::from(wait_ms.min(10_000)));
        while Instant::now() < until {
            self.m.poll(Duration::from_millis(2))?;
        }
        if self.m.events.is_empty() {
            return Ok(format!("no event within {wait_ms} ms"));
        }
        let seen: Vec<String> = self
            .m
            .events
            .iter()
            .map(|e| format!("code {} handle {:?} info {}", e.code, e.handle, e.info))
            .collect();
        Err(format!("expected no events, seen: [{}]", seen.join(", ")))
    }

    /// Leave nothing behind for the next scenario: terminate what is still offloaded, abort
    /// host-stack connections, drop stray events and records.
    fn cleanup(&mut self) {
        let names: Vec<String> = self.conns.keys().cloned().collect();
        for name in names {
            if let Some(c) = self.conns.get_mut(&name) {
                if let Some((handles, export)) = c.offloaded.take() {
                    let _ = self.m.upload(handles, &export, false);
                }
                if let Some(h) = c.h.take() {
                    let _ = self.m.engine.abort(h);
                }
            }
        }
        // The peer's side of every connection of this scenario goes too (ports free again).
        let ports: Vec<u16> = self.conns.values().map(|c| c.port).collect();
        for p in ports {
            let _ = self
                .peer
                .request(self.m, &format!("FORGET {p}"), Duration::from_secs(10));
        }
        let _ = self.m.poll(Duration::from_millis(5));
        self.m.events.clear();
        self.m.records.clear();
    }
}
