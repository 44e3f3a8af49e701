//! The host stack of a scenario: the netstack engine on queue pair 0 of the device (the
//! NIC's ordinary path), talking to the Linux kernel peer inside the scenario's namespace.
//! Connections opened here are ordinary host-stack connections; offloading them needs the
//! data path (issue 4), so today they carry data only while they are in the host stack.
//!
//! The peer is a thread inside the namespace with a kernel socket: it accepts (or makes)
//! one connection, reads until EOF and reports the byte count and SHA-256 of what it got.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chimney_miniport::NicQueues;
use chimney_netstack::{ConnHandle, Engine, EngineConfig, Event as NetEvent, Instant};
use chimney_wire::{NetNs, GUEST_IPV4, GUEST_IPV6, PEER_IPV4, PEER_IPV6};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::frontend::Vmm;
use crate::vmm_platform::VmmPlatform;

/// How long one host-stack step may take before it fails (no timed assertions: this is a
/// bound against hangs, not a performance check).
pub const STEP_LIMIT: Duration = Duration::from_secs(60);

/// What the peer saw: bytes read and their SHA-256, or why it stopped.
pub type PeerResult = Result<(u64, [u8; 32]), String>;

struct HostConn {
    h: ConnHandle,
    peer: Option<JoinHandle<PeerResult>>,
    /// Commands to the peer thread (write, close, reset, stop/resume reading).
    cmd: mpsc::Sender<PeerCmd>,
    sent: u64,
    hasher: Sha256,
    rng: ChaCha8Rng,
    /// The peer's stream seed (`stream_bytes`): what a receive must see.
    peer_seed: u64,
    /// Bytes the peer was asked to write so far.
    peer_writes: u64,
    /// Bytes of the peer's stream the host has been judged to receive so far (the next
    /// receive must continue exactly there: no byte lost, none twice).
    peer_read: u64,
}

/// What the peer thread is told to do next (the `peer` step and `receive`).
#[derive(Debug, Clone, Copy)]
pub enum PeerCmd {
    /// Write this many more bytes of the peer's seeded stream.
    Write(u64),
    /// Half-close after the pending writes (FIN).
    Close,
    /// Abortive close now (SO_LINGER 0: RST).
    Reset,
    StopReading,
    ResumeReading,
}

pub struct HostStack {
    engine: Engine,
    /// Connections handed to the offload target (exported), waiting to come back.
    parked: HashMap<String, HostConn>,
    nic: NicQueues,
    platform: Arc<VmmPlatform>,
    t0: std::time::Instant,
    conns: HashMap<String, HostConn>,
    events: Vec<NetEvent>,
    seed: u64,
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl HostStack {
    /// Set up queue pair 0 and an engine with the guest's addresses.
    pub fn new(vmm: &mut Vmm, queue_size: u16, seed: u64) -> Result<HostStack, String> {
        let rx = vmm
            .create_queue(0, queue_size)
            .map_err(|e| format!("NIC rx queue: {e}"))?;
        let tx = vmm
            .create_queue(1, queue_size)
            .map_err(|e| format!("NIC tx queue: {e}"))?;
        let platform = vmm.platform().clone();
        let nic = NicQueues::new(&*platform, rx, tx, 2048).map_err(|e| format!("NIC: {e}"))?;
        // The host stack is the NIC's own interface and uses the device's MAC: the device
        // takes an offloaded connection's frames only on that MAC (C-047, C-048), so a
        // connection the host stack opened must already be known to the peer by it.
        let mac = chimney_device::DeviceConfig::default().mac;
        let mut cfg = EngineConfig::new(mac, Some(GUEST_IPV4), Some(GUEST_IPV6));
        cfg.seed = seed;
        let engine = Engine::new(cfg, Instant::ZERO).map_err(|e| format!("engine: {e}"))?;
        Ok(HostStack {
            engine,
            nic,
            platform,
            t0: std::time::Instant::now(),
            conns: HashMap::new(),
            parked: HashMap::new(),
            events: Vec::new(),
            seed,
        })
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.t0.elapsed().as_micros() as u64)
    }

    pub fn has(&self, name: &str) -> bool {
        self.conns.contains_key(name)
    }

    /// Is `name` offloaded (exported and not yet imported back)?
    pub fn is_parked(&self, name: &str) -> bool {
        self.parked.contains_key(name)
    }

    /// Take `name` out of the host stack for offload (C-070: it is synchronized; C-072:
    /// owed ACKs go out first): wait until everything sent is acknowledged, export, flush.
    pub fn export(&mut self, name: &str) -> Result<chimney_netstack::ConnectionExport, String> {
        let h = self
            .conns
            .get(name)
            .map(|c| c.h)
            .ok_or_else(|| format!("no host-stack connection `{name}` (open it first)"))?;
        self.pump(
            &format!("`{name}`: wait until all sent data is acknowledged"),
            |e, _| e.tcb(h).is_ok_and(|t| t.snd_una == t.snd_max),
        )?;
        let now = self.now();
        let st = self
            .engine
            .export(now, h)
            .map_err(|e| format!("export `{name}`: {e}"))?;
        // One round: the owed ACK export queued goes out now.
        self.pump("flush after export", |_, _| true)?;
        if let Some(c) = self.conns.remove(name) {
            self.parked.insert(name.to_string(), c);
        }
        Ok(st)
    }

    /// The next `n` bytes of `name`'s seeded stream (offloaded connection: the bytes go
    /// through the miniport), counted in what the peer must receive.
    pub fn take_bytes(&mut self, name: &str, n: usize) -> Result<Vec<u8>, String> {
        let c = self
            .parked
            .get_mut(name)
            .ok_or_else(|| format!("`{name}` is not offloaded"))?;
        let mut v = vec![0u8; n];
        c.rng.fill_bytes(&mut v);
        c.hasher.update(&v);
        c.sent += n as u64;
        Ok(v)
    }

    /// After an offloaded connection was disconnected through the miniport: wait for the
    /// peer and compare what it read with what was sent (or `expect_sha256`).
    pub fn finish_offloaded(
        &mut self,
        name: &str,
        graceful: bool,
        expect_sha256: Option<&str>,
    ) -> Result<String, String> {
        let mut c = self
            .parked
            .remove(name)
            .ok_or_else(|| format!("`{name}` is not offloaded"))?;
        let peer = c.peer.take().ok_or("peer already joined")?;
        let limit = std::time::Instant::now() + STEP_LIMIT;
        while !peer.is_finished() {
            if std::time::Instant::now() > limit {
                return Err(format!("the peer of `{name}` did not see the close"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = peer
            .join()
            .map_err(|_| "peer thread panicked".to_string())?;
        check_peer(seen, c, graceful, expect_sha256)
    }

    /// Continue `name` in the host stack from the state the offload target returned.
    pub fn import(
        &mut self,
        name: &str,
        st: &chimney_netstack::ConnectionExport,
    ) -> Result<(), String> {
        let mut c = self
            .parked
            .remove(name)
            .ok_or_else(|| format!("`{name}` is not offloaded"))?;
        let now = self.now();
        c.h = self
            .engine
            .import(now, st)
            .map_err(|e| format!("import `{name}` into the host stack: {e}"))?;
        self.conns.insert(name.to_string(), c);
        Ok(())
    }

    /// Drive the engine and the NIC until `done` or the limit.
    fn pump(
        &mut self,
        what: &str,
        mut done: impl FnMut(&mut Engine, &[NetEvent]) -> bool,
    ) -> Result<(), String> {
        let limit = std::time::Instant::now() + STEP_LIMIT;
        loop {
            let now = self.now();
            self.engine.handle_timeout(now);
            while let Some(t) = self.engine.poll_transmit(now) {
                send_frame(&mut self.nic, &self.platform, t.frame, limit)
                    .map_err(|e| format!("{what}: NIC send: {e}"))?;
            }
            while let Some(e) = self.engine.poll_event() {
                self.events.push(e);
            }
            if done(&mut self.engine, &self.events) {
                return Ok(());
            }
            if std::time::Instant::now() > limit {
                return Err(format!("{what}: not done after {STEP_LIMIT:?}"));
            }
            let wait = Duration::from_millis(2);
            if let Some(f) = self
                .nic
                .recv(&*self.platform, wait)
                .map_err(|e| format!("{what}: NIC receive: {e}"))?
            {
                let now = self.now();
                // A frame the engine cannot parse is the wire's problem, not the step's.
                let _ = self.engine.handle_frame(now, &f);
            }
        }
    }

    /// Open `name` to the peer at `port`: active (we connect, the peer accepts) or passive
    /// (the peer connects to us).
    pub fn open(
        &mut self,
        ns: &NetNs,
        name: &str,
        v6: bool,
        active: bool,
        port: u16,
    ) -> Result<String, String> {
        if self.conns.contains_key(name) {
            return Err(format!("connection `{name}` is already open"));
        }
        let (peer_ip, our_ip): (IpAddr, IpAddr) = if v6 {
            (PEER_IPV6.into(), GUEST_IPV6.into())
        } else {
            (PEER_IPV4.into(), GUEST_IPV4.into())
        };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let seed = self.seed
            ^ name
                .bytes()
                .fold(0u64, |a, b| a.rotate_left(5) ^ u64::from(b));
        let peer_seed = seed ^ 0x9e37_79b9_7f4a_7c15;
        let (cmd, cmd_rx) = mpsc::channel::<PeerCmd>();
        let peer = if active {
            ns.spawn("peer-accept", move || {
                let l = match TcpListener::bind(SocketAddr::new(peer_ip, port)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("peer bind {peer_ip}:{port}: {e}")));
                        return Err(format!("bind: {e}"));
                    }
                };
                let _ = ready_tx.send(Ok(()));
                accept_with_limit(&l).and_then(|s| serve(s, cmd_rx, peer_seed))
            })
        } else {
            let _ = ready_tx.send(Ok(()));
            ns.spawn("peer-connect", move || {
                // Retry briefly: our listen happens right after the spawn.
                let mut last = String::new();
                for _ in 0..100 {
                    match TcpStream::connect_timeout(
                        &SocketAddr::new(our_ip, port),
                        Duration::from_secs(5),
                    ) {
                        Ok(s) => return serve(s, cmd_rx, peer_seed),
                        Err(e) => last = e.to_string(),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(format!("peer connect to {our_ip}:{port}: {last}"))
            })
        }
        .map_err(|e| format!("peer thread in the namespace: {e}"))?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "peer thread did not start".to_string())??;
        let h = if active {
            let now = self.now();
            let h = self
                .engine
                .connect(now, SocketAddr::new(peer_ip, port), None)
                .map_err(|e| format!("connect: {e}"))?;
            self.pump("active open", |_, ev| ev.contains(&NetEvent::Connected(h)))?;
            h
        } else {
            self.engine.listen(port);
            let mut got = None;
            self.pump("passive open", |_, ev| {
                got = ev.iter().find_map(|e| match e {
                    NetEvent::Accepted { port: p, conn } if *p == port => Some(*conn),
                    _ => None,
                });
                got.is_some()
            })?;
            got.ok_or("passive open: no connection")?
        };
        let tuple = self.engine.tuple(h).map_err(|e| e.to_string())?;
        self.conns.insert(
            name.to_string(),
            HostConn {
                h,
                peer: Some(peer),
                cmd,
                sent: 0,
                hasher: Sha256::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
                peer_seed,
                peer_writes: 0,
                peer_read: 0,
            },
        );
        Ok(format!(
            "{} {} → {} established",
            if active { "active" } else { "passive" },
            tuple.local,
            tuple.remote
        ))
    }

    fn conn_mut(&mut self, name: &str) -> Result<&mut HostConn, String> {
        match self.conns.get_mut(name) {
            Some(c) => Ok(c),
            None => self
                .parked
                .get_mut(name)
                .ok_or_else(|| format!("no connection `{name}` (open it first)")),
        }
    }

    /// Tell the peer of `name` what to do.
    pub fn peer(&mut self, name: &str, cmd: PeerCmd) -> Result<(), String> {
        self.conn_mut(name)?
            .cmd
            .send(cmd)
            .map_err(|_| format!("the peer of `{name}` has already stopped"))
    }

    /// The peer vanishes: in its namespace the guest's addresses now resolve to a MAC no
    /// one has, so nothing the kernel sends reaches the device (which takes offloaded
    /// frames only on its own MAC, C-048) or the host stack. What the device sends still
    /// reaches the kernel, whose answers are lost the same way.
    pub fn go_silent(ns: &NetNs, tap: &str) -> Result<String, String> {
        const NOBODY: &str = "02:00:00:00:de:ad";
        for ip in [GUEST_IPV4.to_string(), GUEST_IPV6.to_string()] {
            ns.ip(&[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                NOBODY,
                "dev",
                tap,
                "nud",
                "permanent",
            ])
            .map_err(|e| format!("go_silent: ip neigh replace {ip}: {e}"))?;
        }
        Ok(format!(
            "the peer went silent: its frames to {GUEST_IPV4} / {GUEST_IPV6} go to {NOBODY}"
        ))
    }

    /// Ask the peer to write `n` more bytes; returns the SHA-256 those bytes have.
    pub fn peer_write(&mut self, name: &str, n: u64) -> Result<[u8; 32], String> {
        let c = self.conn_mut(name)?;
        let mut h = Sha256::new();
        let mut chunk = vec![0u8; 64 << 10];
        let mut at = c.peer_writes;
        let end = at + n;
        while at < end {
            let k = (end - at).min(chunk.len() as u64) as usize;
            stream_bytes(c.peer_seed, at, &mut chunk[..k]);
            h.update(&chunk[..k]);
            at += k as u64;
        }
        c.peer_writes = end;
        c.cmd
            .send(PeerCmd::Write(n))
            .map_err(|_| format!("the peer of `{name}` has already stopped"))?;
        Ok(h.finalize().into())
    }

    /// The SHA-256 of the next `n` bytes of the peer's stream the host must receive (from
    /// where the last receive ended); fails when the peer was not asked to write them.
    pub fn expect_peer(&mut self, name: &str, n: u64) -> Result<[u8; 32], String> {
        let c = self.conn_mut(name)?;
        let unread = c.peer_writes - c.peer_read;
        if n > unread {
            return Err(format!(
                "`{name}`: {n} bytes to receive but the peer wrote only {unread} unread bytes \
                 (`peer_write` them first)"
            ));
        }
        let mut h = Sha256::new();
        let mut chunk = vec![0u8; 64 << 10];
        let mut at = c.peer_read;
        let end = at + n;
        while at < end {
            let k = (end - at).min(chunk.len() as u64) as usize;
            stream_bytes(c.peer_seed, at, &mut chunk[..k]);
            h.update(&chunk[..k]);
            at += k as u64;
        }
        c.peer_read = end;
        Ok(h.finalize().into())
    }

    /// Bytes the peer wrote that no receive has taken yet.
    pub fn peer_unread(&self, name: &str) -> u64 {
        self.conns
            .get(name)
            .or_else(|| self.parked.get(name))
            .map_or(0, |c| c.peer_writes - c.peer_read)
    }

    /// Bytes readable on host-stack connection `name` right now (after one round of the
    /// engine and NIC): with nothing unread at the peer it must be 0 (no byte twice).
    pub fn readable_now(&mut self, name: &str) -> Result<usize, String> {
        let h = self
            .conns
            .get(name)
            .map(|c| c.h)
            .ok_or_else(|| format!("no host-stack connection `{name}` (open it first)"))?;
        self.pump("flush", |_, _| true)?;
        let mut buf = vec![0u8; 64 << 10];
        let mut extra = 0;
        while let Ok(k) = self.engine.recv(h, &mut buf) {
            if k == 0 {
                break;
            }
            extra += k;
        }
        Ok(extra)
    }

    /// Receive `n` bytes on host-stack connection `name` through the engine; their SHA-256.
    pub fn receive(&mut self, name: &str, n: u64) -> Result<[u8; 32], String> {
        let h = self
            .conns
            .get(name)
            .map(|c| c.h)
            .ok_or_else(|| format!("no host-stack connection `{name}` (open it first)"))?;
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        self.pump(&format!("receive {n} bytes on `{name}`"), |engine, _| {
            while got < n {
                let want = (n - got).min(buf.len() as u64) as usize;
                match engine.recv(h, &mut buf[..want]) {
                    Ok(0) | Err(_) => return false,
                    Ok(k) => {
                        hasher.update(&buf[..k]);
                        got += k as u64;
                    }
                }
            }
            true
        })?;
        Ok(hasher.finalize().into())
    }

    /// Forget an offloaded connection that ended in the device (e.g. the peer reset it):
    /// nothing comes back into the host stack.
    pub fn forget(&mut self, name: &str) {
        self.parked.remove(name);
    }

    /// Send `bytes` seeded bytes on `name` through the host stack.
    pub fn send(&mut self, name: &str, bytes: u64) -> Result<String, String> {
        let mut chunk = vec![0u8; 64 << 10];
        let mut pending: Vec<u8> = Vec::new();
        let mut left = bytes;
        let mut conns = std::mem::take(&mut self.conns);
        let r = if let Some(c) = conns.get_mut(name) {
            let h = c.h;
            self.pump(&format!("send {bytes} bytes on `{name}`"), |engine, _| {
                loop {
                    if pending.is_empty() {
                        if left == 0 {
                            return true;
                        }
                        let n = left.min(chunk.len() as u64) as usize;
                        c.rng.fill_bytes(&mut chunk[..n]);
                        c.hasher.update(&chunk[..n]);
                        pending.extend_from_slice(&chunk[..n]);
                        left -= n as u64;
                    }
                    match engine.send(h, &pending) {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => {
                            c.sent += n as u64;
                            pending.drain(..n);
                        }
                    }
                }
            })
        } else {
            Err(format!("no host-stack connection `{name}` (open it first)"))
        };
        self.conns = conns;
        r?;
        Ok(format!("{bytes} bytes queued in the host stack"))
    }

    /// Close `name` (graceful: FIN after the data; abortive: RST) and wait for the peer. A
    /// graceful close compares what the peer read with what was sent (or `expect_sha256`).
    pub fn close(
        &mut self,
        name: &str,
        graceful: bool,
        expect_sha256: Option<&str>,
    ) -> Result<String, String> {
        let mut c = self
            .conns
            .remove(name)
            .ok_or_else(|| format!("no host-stack connection `{name}` (open it first)"))?;
        let h = c.h;
        if graceful {
            self.engine.close(h).map_err(|e| format!("close: {e}"))?;
        } else {
            self.engine.abort(h).map_err(|e| format!("abort: {e}"))?;
        }
        let peer = c.peer.take().ok_or("peer already joined")?;
        self.pump(&format!("close `{name}`"), |_, _| peer.is_finished())?;
        let seen = peer
            .join()
            .map_err(|_| "peer thread panicked".to_string())?;
        check_peer(seen, c, graceful, expect_sha256)
    }
}

/// Compare what the peer read with what was sent on `c`.
fn check_peer(
    seen: PeerResult,
    c: HostConn,
    graceful: bool,
    expect_sha256: Option<&str>,
) -> Result<String, String> {
    {
        let sent_sha: [u8; 32] = c.hasher.finalize().into();
        if !graceful {
            // An abortive close sends RST (C-181): the peer's read fails with a reset.
            return match &seen {
                Err(e) if e.contains("reset") => Ok(format!("aborted; the peer saw: {e}")),
                Ok((n, _)) => Err(format!(
                    "abortive close: expected the peer to see a reset, seen EOF after {n} bytes"
                )),
                Err(e) => Err(format!(
                    "abortive close: expected the peer to see a reset, seen: {e}"
                )),
            };
        }
        let (n, sha) = seen.map_err(|e| format!("peer: {e}"))?;
        let want = expect_sha256.map_or_else(|| hex(&sent_sha), |s| s.to_ascii_lowercase());
        if n != c.sent || hex(&sha) != want {
            return Err(format!(
                "peer received {n} bytes with SHA-256 {}, expected {} bytes with SHA-256 {want}",
                hex(&sha),
                c.sent
            ));
        }
        Ok(format!(
            "peer received {n} bytes, SHA-256 {} as sent",
            hex(&sha)
        ))
    }
}

/// Send one frame; when every tx buffer is in flight, wait for the device to take some
/// (it runs in its own process) instead of dropping the frame.
fn send_frame(
    nic: &mut NicQueues,
    platform: &VmmPlatform,
    frame: &[u8],
    limit: std::time::Instant,
) -> Result<(), String> {
    loop {
        match nic.send(platform, frame) {
            Ok(()) => return Ok(()),
            Err(chimney_miniport::NicError::TxFull(n)) => {
                if std::time::Instant::now() > limit {
                    return Err(format!("all {n} tx buffers stayed in flight"));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn accept_with_limit(l: &TcpListener) -> Result<TcpStream, String> {
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let limit = std::time::Instant::now() + STEP_LIMIT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > limit {
                    return Err("peer: no connection arrived".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Longest the peer waits without any progress or command (a bound against hangs; the
/// host dropping its command sender ends the peer at once).
const PEER_IDLE_LIMIT: Duration = Duration::from_secs(300);

/// The peer: reads (unless told to stop) until EOF, writes its seeded stream when told,
/// closes or resets when told. Returns the bytes it read and their SHA-256.
fn serve(s: TcpStream, cmds: mpsc::Receiver<PeerCmd>, seed: u64) -> PeerResult {
    use std::io::Write;
    use std::sync::mpsc::TryRecvError;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut offset = 0u64;
    let (mut h, mut n) = (Sha256::new(), 0u64);
    let (mut reading, mut eof) = (true, false);
    let (mut close_after, mut closed) = (false, false);
    let mut to_write = 0u64;
    let (mut out, mut out_at) = (Vec::new(), 0usize);
    let mut buf = vec![0u8; 64 << 10];
    let mut idle_since = std::time::Instant::now();
    loop {
        let mut progress = false;
        loop {
            match cmds.try_recv() {
                Ok(c) => {
                    progress = true;
                    match c {
                        PeerCmd::Write(k) => to_write += k,
                        PeerCmd::Close => close_after = true,
                        PeerCmd::Reset => {
                            reset_on_drop(&s)?;
                            return Ok((n, h.finalize().into()));
                        }
                        PeerCmd::StopReading => reading = false,
                        PeerCmd::ResumeReading => reading = true,
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    return Err(format!("the host went away after {n} bytes"))
                }
            }
        }
        if out_at == out.len() && to_write > 0 {
            let k = to_write.min(64 << 10) as usize;
            out.resize(k, 0);
            stream_bytes(seed, offset, &mut out);
            offset += k as u64;
            out_at = 0;
            to_write -= k as u64;
        }
        if out_at < out.len() {
            match (&s).write(&out[out_at..]) {
                Ok(k) => {
                    out_at += k;
                    progress |= k > 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("peer write: {e}")),
            }
        }
        let written = out_at == out.len() && to_write == 0;
        if close_after && !closed && written {
            s.shutdown(std::net::Shutdown::Write)
                .map_err(|e| format!("peer shutdown: {e}"))?;
            closed = true;
        }
        if reading && !eof {
            match (&s).read(&mut buf) {
                Ok(0) => eof = true,
                Ok(k) => {
                    h.update(&buf[..k]);
                    n += k as u64;
                    progress = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("peer read after {n} bytes: {e}")),
            }
        }
        if eof && written {
            // Closing now would orphan whatever the host has not acknowledged yet, and under
            // loss Linux gives up on an orphan after tcp_orphan_retries and resets it, so the
            // data never arrives (docs: /work/notes/netstack-findings.md). Wait until the send
            // queue (data and our FIN) is acknowledged; bounded below STEP_LIMIT so the host's
            // close step still reports.
            wait_until_acked(&s, PEER_ACK_LIMIT);
            return Ok((n, h.finalize().into()));
        }
        if progress {
            idle_since = std::time::Instant::now();
        } else if idle_since.elapsed() > PEER_IDLE_LIMIT {
            return Err(format!("peer idle for {PEER_IDLE_LIMIT:?} after {n} bytes"));
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// Longest the peer waits at the end for its sent bytes to be acknowledged (below
/// [`STEP_LIMIT`], which the host's close step waits at most).
const PEER_ACK_LIMIT: Duration = Duration::from_secs(30);

/// Wait for the peer's sent bytes to be acknowledged before it closes (an orphaned socket
/// is aborted under loss: `chimney_wire::socket::wait_until_acked`).
fn wait_until_acked(s: &TcpStream, limit: Duration) {
    if let Err(unacked) = chimney_wire::socket::wait_until_acked(s, limit) {
        tracing::warn!(unacked, "peer closes with bytes still unacknowledged");
    }
}

/// Bytes `offset..offset + out.len()` of the seeded stream `seed`, however it is cut into
/// pieces (the peer writes in whatever pieces its socket takes).
pub fn stream_bytes(seed: u64, offset: u64, out: &mut [u8]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_word_pos(u128::from(offset / 4));
    let skip = (offset % 4) as usize;
    let mut tmp = vec![0u8; out.len() + skip];
    rng.fill_bytes(&mut tmp);
    out.copy_from_slice(&tmp[skip..]);
}

/// SO_LINGER {on, 0}: closing the socket sends RST instead of FIN.
fn reset_on_drop(s: &TcpStream) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "peer SO_LINGER: {}",
            std::io::Error::last_os_error()
        ))
    }
}
