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
    sent: u64,
    hasher: Sha256,
    rng: ChaCha8Rng,
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
                accept_with_limit(&l).and_then(sink)
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
                        Ok(s) => return sink(s),
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
        let seed = self.seed
            ^ name
                .bytes()
                .fold(0u64, |a, b| a.rotate_left(5) ^ u64::from(b));
        self.conns.insert(
            name.to_string(),
            HostConn {
                h,
                peer: Some(peer),
                sent: 0,
                hasher: Sha256::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
            },
        );
        Ok(format!(
            "{} {} → {} established",
            if active { "active" } else { "passive" },
            tuple.local,
            tuple.remote
        ))
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
            return Ok(format!(
                "aborted; the peer stopped with {}",
                match &seen {
                    Ok((n, _)) => format!("EOF after {n} bytes"),
                    Err(e) => e.clone(),
                }
            ));
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

/// Read to EOF; bytes and SHA-256.
fn sink(mut s: TcpStream) -> PeerResult {
    s.set_read_timeout(Some(STEP_LIMIT))
        .map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok((n, h.finalize().into())),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) => return Err(format!("peer read after {n} bytes: {e}")),
        }
    }
}
