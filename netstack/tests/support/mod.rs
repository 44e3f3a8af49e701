//! Test support: our engine on the userspace side of a TAP, the Linux kernel's TCP on the other
//! side inside a namespace the test creates (chimney-wire's standard topology), the seeded
//! impairment layer in both directions, and a pcap of what crossed the TAP.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use chimney_netstack::impair::{ImpairConfig, Impairment};
use chimney_netstack::{ConnHandle, Engine, EngineConfig, Event, Instant};
use chimney_wire::{
    PcapWriter, Topology, TopologyConfig, VnetHeader, GUEST_IPV4, GUEST_IPV6, PEER_IPV4, PEER_IPV6,
};
use sha2::{Digest, Sha256};

pub const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// Seed for a test: `NETSTACK_SEED` (decimal or 0x-hex) if set, else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("NETSTACK_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("NETSTACK_SEED={s:?} is not a number"))
        }
        Err(_) => default,
    }
}

pub fn peer_ip(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(PEER_IPV6)
    } else {
        IpAddr::V4(PEER_IPV4)
    }
}

pub fn our_ip(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(GUEST_IPV6)
    } else {
        IpAddr::V4(GUEST_IPV4)
    }
}

/// Engine config for tests: fast minimum RTO (the kernel side gets `rto_min` too), short
/// TIME_WAIT.
pub fn test_engine_config(seed: u64) -> EngineConfig {
    let mut c = EngineConfig::new(OUR_MAC, Some(GUEST_IPV4), Some(GUEST_IPV6));
    c.seed = seed;
    c.tcp.min_rto = Duration::from_millis(5);
    c.tcp.delayed_ack = Duration::from_millis(5);
    c.tcp.initial_rto = Duration::from_millis(300);
    c.tcp.time_wait = Duration::from_millis(500);
    c.tcp.send_buffer = 4 << 20;
    c.tcp.recv_buffer = 4 << 20;
    // The test application keeps reading after our FIN (half close), like a Linux socket that
    // is not orphaned, which tcp_fin_timeout never times out. Under 20 % loss both ways the
    // kernel's RTO reaches TCP_RTO_MAX (120 s, seen with `ss -ti`: srtt ~12 s, rto 120000),
    // the same as the default FIN_WAIT_2 timer (restarted on each segment), so our side raced
    // the kernel's next retransmission and reported TimedOut (loss20-dup-v6-passive, 0x2023).
    // The per-connection test bound (NETSTACK_LIMIT_SECS) catches a real stall instead.
    c.tcp.fin_wait_2 = Duration::from_secs(3600);
    // RTO backoff capped at 1 s, like the kernel peer's tcp_rto_max_ms in the same rig (a 1 ms
    // path needs no larger RTO), and a retry limit to match (the kernel gets tcp_retries2 =
    // 200). Why: under 20 % loss each way an RTO retransmission fails (it or its ACK is lost)
    // with p = 0.36, so chains of 9–13 consecutive failures occur a few times per 64 MiB cell
    // matrix; with the default 60 s cap such a chain means 20–40 s without a single segment
    // ("no progress for 30 s" stalls, one cell took 219 s), and a chain of 15 hit the default
    // limit of 15 retransmissions (our side timed out, ~1 % per run of the 20 % cells).
    c.tcp.max_rto = Duration::from_secs(1);
    c.tcp.max_retransmissions = 100;
    c
}

/// Deterministic payload: byte `i` of stream `seed`.
pub fn fill(seed: u64, offset: u64, out: &mut [u8]) {
    for (k, b) in out.iter_mut().enumerate() {
        let i = offset + k as u64;
        let x = (i / 8) ^ seed.rotate_left(13);
        let x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        *b = (x >> ((i % 8) * 8)) as u8 ^ (x >> 59) as u8;
    }
}

pub fn expected_sha(seed: u64, len: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut off = 0;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        fill(seed, off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.finalize().into()
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Rig {
    pub topo: Topology,
    pub engine: Engine,
    /// Engine → kernel.
    pub up: Impairment,
    /// Kernel → engine.
    pub down: Impairment,
    pub pcap: Option<PcapWriter>,
    pub pcap_path: Option<PathBuf>,
    start: std::time::Instant,
    rx: Vec<u8>,
    pub frames_to_kernel: u64,
    pub frames_from_kernel: u64,
    pub events: Vec<Event>,
    /// Drop everything in both directions (the peer "vanishes").
    pub blackhole: bool,
    /// Flight recorder: the last frames as delivered (after impairment) both ways, with their
    /// time; written out as a pcap by `stall_report` (a full pcap of a 64 MiB cell is ~150 MB).
    recorder: std::collections::VecDeque<(std::time::Duration, Vec<u8>)>,
    /// TAP writes that failed (time since start, error).
    pub tap_write_failures: Vec<String>,
    /// Kernel-side capture (NETSTACK_KERNEL_PCAP), stopped on drop.
    kernel_pcap: Option<(std::process::Child, PathBuf)>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some((mut c, _)) = self.kernel_pcap.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Frames the flight recorder keeps.
const RECORDER_FRAMES: usize = 10_000;

impl Rig {
    /// A fresh namespace + TAP, our engine, impairment seeded from `seed`.
    pub fn new(name: &str, seed: u64, imp: ImpairConfig, cfg: EngineConfig) -> Rig {
        Rig::with_offload(name, seed, imp, cfg, Default::default())
    }

    /// As `new`, with the kernel allowed to hand us offloaded frames (`TUNSETOFFLOAD`).
    pub fn with_offload(
        name: &str,
        seed: u64,
        imp: ImpairConfig,
        cfg: EngineConfig,
        offload: chimney_wire::Offload,
    ) -> Rig {
        let topo = Topology::new(&TopologyConfig {
            ns_prefix: format!("ns-{}", &name[..name.len().min(6)]),
            tap_name: "tap0".into(),
            mtu: 1500,
            offload,
        })
        .expect("create namespace + TAP (needs root)");
        // Let the kernel peer retransmit as fast as we do under heavy loss.
        for (fam, r, metric) in [("-4", "192.0.2.0/24", "0"), ("-6", "2001:db8::/64", "256")] {
            topo.ns
                .ip(&[
                    fam, "route", "replace", r, "dev", "tap0", "proto", "kernel", "metric", metric,
                    "rto_min", "5ms", "quickack", "1",
                ])
                .expect("set rto_min on the peer's route");
        }
        // On an impaired wire the kernel's own neighbor resolution of our address is lossy too:
        // three lost solicitations (0.36³ ≈ 5 % at 20 % loss each way) fail a connect() with
        // EHOSTUNREACH (seen: loss20-v6-passive, seed 0x7143) or drop the kernel's queued
        // output until it resolves again. That is the kernel's ARP/ND, not the TCP under test,
        // so lossy rigs give the kernel a permanent entry for us; the clean rigs keep
        // resolving dynamically (our ARP/NS answers stay tested there).
        if !imp.is_clean() {
            let mac = OUR_MAC.map(|b| format!("{b:02x}")).join(":");
            for ip in [IpAddr::V4(GUEST_IPV4), IpAddr::V6(GUEST_IPV6)] {
                topo.ns
                    .ip(&[
                        "neigh",
                        "replace",
                        &ip.to_string(),
                        "lladdr",
                        &mac,
                        "dev",
                        "tap0",
                        "nud",
                        "permanent",
                    ])
                    .expect("permanent neighbor entry for our engine in the peer's namespace");
            }
        }
        // And cap its RTO (Linux ≥ 6.15, per namespace; read at socket creation): under 20 %
        // loss both ways its RTT estimate can inflate to seconds (srtt ~8 s seen), and with the
        // default 120 s cap one lost retransmission stalled the kernel→us direction for
        // minutes. A 1 ms path needs no RTO above 1 s. Linux models its give-up time
        // (tcp_retries2) with that cap, so 15 retries would be ~13 s and the kernel reset live
        // connections (seen: ETIMEDOUT, seed 0x2022): 200 retries ≈ 200 s of silence. Without
        // tcp_rto_max_ms (older kernels) the default stays, which is only slower.
        let capped = topo
            .ns
            .spawn("sysctl", || {
                std::fs::write("/proc/sys/net/ipv4/tcp_retries2", "200")?;
                std::fs::write("/proc/sys/net/ipv4/tcp_rto_max_ms", "1000")
            })
            .expect("spawn sysctl thread in namespace")
            .join()
            .expect("sysctl thread");
        if let Err(e) = capped {
            eprintln!("note: could not cap the kernel peer's RTO (tcp_rto_max_ms): {e}");
        }
        // NETSTACK_KERNEL_PCAP=1: also capture headers on the kernel's side of the TAP (what
        // the kernel really received and sent), for stall analysis.
        let kernel_pcap = std::env::var("NETSTACK_KERNEL_PCAP").ok().map(|_| {
            let path = std::env::temp_dir().join(format!("kcap-{}.pcap", topo.ns.name()));
            let child = topo
                .ns
                .command("tcpdump")
                .args(["-i", "tap0", "-s", "128", "-U", "-w"])
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("tcpdump in the peer's namespace");
            std::thread::sleep(Duration::from_millis(500));
            (child, path)
        });
        let start = std::time::Instant::now();
        let now = Instant::ZERO;
        let engine = Engine::new(cfg, now).expect("engine config");
        Rig {
            topo,
            engine,
            up: Impairment::new(imp, seed ^ 0x0075_7000),
            down: Impairment::new(imp, seed ^ 0x00d0_0000),
            pcap: None,
            pcap_path: None,
            start,
            rx: vec![0u8; 70_000],
            frames_to_kernel: 0,
            frames_from_kernel: 0,
            events: Vec::new(),
            blackhole: false,
            recorder: std::collections::VecDeque::with_capacity(RECORDER_FRAMES),
            tap_write_failures: Vec::new(),
            kernel_pcap,
        }
    }

    fn remember(&mut self, frame: &[u8]) {
        let mut buf = if self.recorder.len() >= RECORDER_FRAMES {
            self.recorder
                .pop_front()
                .map(|(_, b)| b)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        buf.clear();
        buf.extend_from_slice(frame);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.recorder.push_back((ts, buf));
    }

    /// What a stalled connection looks like from both sides: the flight recorder's last
    /// frames as a pcap (path returned in the text), the kernel socket (`ss -tinoem`) and the
    /// kernel's TCP counters (`nstat -az`) in the peer's namespace.
    pub fn stall_report(&mut self, name: &str) -> String {
        let path = std::env::temp_dir().join(format!("{name}-stall-{}.pcap", std::process::id()));
        let mut out = format!(
            "kernel-side capture: {:?}\nTAP writes failed: {} (last: {:?})\n",
            self.kernel_pcap.as_ref().map(|k| &k.1),
            self.tap_write_failures.len(),
            self.tap_write_failures
                .iter()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
        );
        match PcapWriter::create(&path) {
            Ok(w) => {
                for (ts, f) in &self.recorder {
                    let _ = w.record_at(*ts, f);
                }
                out += &format!("last {} frames: {}\n", self.recorder.len(), path.display());
            }
            Err(e) => out += &format!("flight recorder pcap not written: {e}\n"),
        }
        // Twice, 3 s apart, with the TAP's counters: does the kernel socket see our segments
        // (segs_in) and answer (segs_out) while we see nothing?
        for round in 0..2 {
            if round == 1 {
                std::thread::sleep(Duration::from_secs(3));
            }
            for args in [&["-tinoem"][..]] {
                if let Ok(o) = self.topo.ns.command("ss").args(args).output() {
                    out += &String::from_utf8_lossy(&o.stdout);
                }
            }
            if let Ok(o) = self
                .topo
                .ns
                .command("ip")
                .args(["-s", "link", "show", "tap0"])
                .output()
            {
                out += &String::from_utf8_lossy(&o.stdout);
            }
        }
        // Experiment: replay our last frame to the kernel three times while capturing on the
        // kernel's side of the TAP, then read what the kernel sent back. Shows whether the kernel
        // answers at all, and whether its answers reach us.
        let kpath =
            std::env::temp_dir().join(format!("{name}-kernelside-{}.pcap", std::process::id()));
        let dump = self
            .topo
            .ns
            .command("tcpdump")
            .args(["-i", "tap0", "-nn", "-U", "-w"])
            .arg(&kpath)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        std::thread::sleep(Duration::from_millis(1500));
        let ours = self
            .recorder
            .iter()
            .rev()
            .find(|(_, f)| f.len() > 60 && f[6..12] == OUR_MAC)
            .map(|(_, f)| f.clone());
        let mut back = 0;
        if let Some(f) = ours {
            for _ in 0..3 {
                let w = self.topo.tap.write_frame(&VnetHeader::default(), &f);
                out += &format!("replayed our last frame ({} bytes): {w:?}\n", f.len());
                let mut buf = vec![0u8; 70_000];
                let end = std::time::Instant::now() + Duration::from_millis(300);
                while std::time::Instant::now() < end {
                    if let Ok(Some(n)) = self
                        .topo
                        .tap
                        .read_raw_timeout(&mut buf, Duration::from_millis(50))
                    {
                        back += 1;
                        out += &format!(
                            "  read back {} bytes: {:02x?}\n",
                            n - 12,
                            &buf[12..n.min(12 + 78)]
                        );
                    }
                }
            }
        }
        out += &format!("frames read back after the replays: {back}\n");
        if let Ok(mut child) = dump {
            std::thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            let _ = child.wait();
            if let Ok(o) = std::process::Command::new("tcpdump")
                .args(["-nn", "-r"])
                .arg(&kpath)
                .output()
            {
                out += "kernel-side capture during the replays:\n";
                out += &String::from_utf8_lossy(&o.stdout);
            }
        }
        // Kernel-side threads of this process (the peer's reader/writer): state and wait channel.
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for t in dir.flatten() {
                let p = t.path();
                let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
                if comm.trim() == "peer" {
                    let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
                    let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
                    let state = stat
                        .rsplit(") ")
                        .next()
                        .unwrap_or("")
                        .split(' ')
                        .next()
                        .unwrap_or("");
                    out += &format!(
                        "peer thread {:?}: state {state} wchan {wchan}\n",
                        t.file_name()
                    );
                }
            }
        }
        if let Ok(o) = self
            .topo
            .ns
            .command("tc")
            .args(["-s", "qdisc", "show", "dev", "tap0"])
            .output()
        {
            out += &String::from_utf8_lossy(&o.stdout);
        }
        for fam in ["-4", "-6"] {
            if let Ok(o) = self
                .topo
                .ns
                .command("ip")
                .args([fam, "-s", "neigh"])
                .output()
            {
                out += &String::from_utf8_lossy(&o.stdout);
            }
        }
        if let Ok(o) = self.topo.ns.command("nstat").args(["-az"]).output() {
            let text = String::from_utf8_lossy(&o.stdout);
            for l in text.lines() {
                let nonzero = l.split_whitespace().nth(1).is_some_and(|v| v != "0");
                if nonzero {
                    out += l;
                    out += "\n";
                }
            }
        }
        out
    }

    pub fn with_pcap(mut self, name: &str) -> Self {
        let dir = std::env::var("NETSTACK_PCAP_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().to_string_lossy().into_owned());
        let path = PathBuf::from(dir).join(format!("{name}-{}.pcap", std::process::id()));
        self.pcap = Some(PcapWriter::create(&path).expect("create pcap"));
        self.pcap_path = Some(path);
        self
    }

    pub fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as u64)
    }

    /// Move frames and time for at most `max_wait`.
    pub fn pump(&mut self, max_wait: Duration) {
        let now = self.now();
        // Kernel → impairment.
        while let Ok(Some(n)) = self.topo.tap.read_raw(&mut self.rx) {
            self.ingest(now, n);
        }
        // Impairment → engine.
        while let Some(f) = self.down.pop(now) {
            self.remember(&f);
            let _ = self.engine.handle_frame(now, &f);
            self.down.recycle(f);
        }
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
        }
        while let Some(ev) = self.engine.poll_event() {
            self.events.push(ev);
        }
        self.flush_engine(now);
        self.wait(max_wait);
    }

    /// Send whatever the engine has queued right now.
    pub fn flush_pending(&mut self) {
        let now = self.now();
        self.flush_engine(now);
    }

    fn flush_engine(&mut self, now: Instant) {
        let mut n = 0u32;
        let direct = self.up.config().is_clean() && !self.blackhole;
        while let Some(tx) = self.engine.poll_transmit(now) {
            if direct {
                // Clean wire: straight to the TAP with a virtio header for TSO/checksum offload.
                let mut hdr = VnetHeader::default();
                if let Some((start, off)) = tx.csum_partial {
                    hdr.flags = VnetHeader::F_NEEDS_CSUM;
                    hdr.csum_start = start;
                    hdr.csum_offset = off;
                }
                if let Some(g) = tx.gso {
                    hdr.gso_type = if g.ipv6 {
                        VnetHeader::GSO_TCPV6
                    } else {
                        VnetHeader::GSO_TCPV4
                    };
                    hdr.gso_size = g.mss;
                    hdr.hdr_len = g.header_len;
                }
                if let Some(p) = &self.pcap {
                    let _ = p.record(tx.frame);
                }
                while !self.topo.tap.write_frame(&hdr, tx.frame).unwrap_or(true) {
                    // Kernel queue full: wait for it rather than drop (no impairment asked).
                    std::thread::yield_now();
                }
                self.frames_to_kernel += 1;
                n += 1;
                continue;
            }
            self.up.push(now, tx.frame);
            n += 1;
            assert!(
                n < 100_000,
                "engine produced 100000 frames in one poll: {:?}",
                self.engine.stats()
            );
        }
        while let Some(f) = self.up.pop(now) {
            if self.blackhole {
                self.up.recycle(f);
                continue;
            }
            if let Some(p) = &self.pcap {
                let _ = p.record(&f);
            }
            self.remember(&f);
            let hdr = VnetHeader::default();
            // A full kernel queue drops the frame: that is loss, which TCP handles. Counted,
            // with the last error, for the stall report.
            match self.topo.tap.write_frame(&hdr, &f) {
                Ok(true) => {}
                Ok(false) => self
                    .tap_write_failures
                    .push(format!("{:?}: queue full", self.start.elapsed())),
                Err(e) => self
                    .tap_write_failures
                    .push(format!("{:?}: {e}", self.start.elapsed())),
            }
            self.frames_to_kernel += 1;
            self.up.recycle(f);
        }
    }

    fn wait(&mut self, max_wait: Duration) {
        let now = self.now();
        let mut deadline = now + max_wait;
        for t in [
            self.engine.poll_timeout(),
            self.up.next_release(),
            self.down.next_release(),
        ]
        .into_iter()
        .flatten()
        {
            deadline = deadline.min(t);
        }
        let us = deadline.micros().saturating_sub(now.micros());
        if us == 0 {
            return;
        }
        if let Ok(Some(n)) = self
            .topo
            .tap
            .read_raw_timeout(&mut self.rx, Duration::from_micros(us))
        {
            let now = self.now();
            self.ingest(now, n);
        }
    }

    /// One frame read from the TAP into `self.rx[..n]` (virtio header first).
    fn ingest(&mut self, now: Instant, n: usize) {
        let frame = &self.rx[12..n];
        if let Some(p) = &self.pcap {
            let _ = p.record(frame);
        }
        self.frames_from_kernel += 1;
        if self.blackhole {
            return;
        }
        if self.down.config().is_clean() {
            // Offloaded receive (TUNSETOFFLOAD): NEEDS_CSUM / DATA_VALID frames come from the
            // local kernel with checksums not filled in; skip verification for them.
            let flags = self.rx[0];
            let verify = flags & (VnetHeader::F_NEEDS_CSUM | VnetHeader::F_DATA_VALID) == 0;
            let _ = self.engine.handle_frame_with(now, &self.rx[12..n], verify);
        } else {
            self.down.push(now, frame);
        }
    }

    /// Pump until `done` returns true or `limit` passes (then panic with `what`).
    pub fn run_until(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&mut Rig) -> bool,
    ) {
        let end = std::time::Instant::now() + limit;
        loop {
            if done(self) {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "{what}: not done after {limit:?} (engine stats {:?}, up {:?}, down {:?}, events {:?})",
                self.engine.stats(),
                self.up.stats(),
                self.down.stats(),
                self.events
                    .iter()
                    .filter(|e| !matches!(e, Event::Readable(_) | Event::Writable(_)))
                    .collect::<Vec<_>>()
            );
            self.pump(Duration::from_millis(5));
        }
    }

    pub fn saw(&self, want: impl Fn(&Event) -> bool) -> bool {
        self.events.iter().any(want)
    }
}

/// A kernel-side peer thread: accept one connection on `port` (or connect to us), then run
/// `f` on the stream.
pub fn kernel_accept<R: Send + 'static>(
    rig: &Rig,
    v6: bool,
    port: u16,
    f: impl FnOnce(TcpStream) -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = rig
        .topo
        .ns
        .spawn("peer", move || {
            let l = TcpListener::bind(SocketAddr::new(peer_ip(v6), port)).expect("peer bind");
            tx.send(()).ok();
            let (s, _) = l.accept().expect("peer accept");
            f(s)
        })
        .expect("spawn peer thread in namespace");
    rx.recv().expect("peer listening");
    h
}

pub fn kernel_connect<R: Send + 'static>(
    rig: &Rig,
    v6: bool,
    port: u16,
    f: impl FnOnce(TcpStream) -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    rig.topo
        .ns
        .spawn("peer", move || {
            let s = TcpStream::connect_timeout(
                &SocketAddr::new(our_ip(v6), port),
                Duration::from_secs(20),
            )
            .expect("peer connect to our engine");
            f(s)
        })
        .expect("spawn peer thread in namespace")
}

/// Wait until everything the kernel sent on `s` is acknowledged or `limit` passes
/// (`chimney_wire::socket::wait_until_acked` says why a test peer must).
pub fn wait_until_acked(s: &TcpStream, limit: Duration) {
    let _ = chimney_wire::socket::wait_until_acked(s, limit);
}

/// How long a kernel peer waits for its data to be acknowledged before closing.
const PEER_LINGER: Duration = Duration::from_secs(600);

/// Kernel side: read to EOF, return (bytes, sha256). Before returning (and closing its
/// descriptor), waits until everything the kernel sent on this socket is acknowledged.
pub fn kernel_sink(mut s: TcpStream) -> (u64, [u8; 32]) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) => panic!("kernel peer read failed after {n} bytes: {e}"),
        }
    }
    wait_until_acked(&s, PEER_LINGER);
    (n, h.finalize().into())
}

/// Kernel side: write `len` bytes of stream `seed`, then close.
pub fn kernel_source(mut s: TcpStream, seed: u64, len: u64) -> u64 {
    let mut buf = vec![0u8; 1 << 16];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        fill(seed, off, &mut buf[..n]);
        if let Err(e) = s.write_all(&buf[..n]) {
            panic!("kernel peer write failed at {off}: {e}");
        }
        off += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write).ok();
    wait_until_acked(&s, PEER_LINGER);
    off
}

/// Engine side sender state.
pub struct Sender {
    pub conn: ConnHandle,
    pub seed: u64,
    pub len: u64,
    pub off: u64,
    buf: Vec<u8>,
    pub closed: bool,
}

impl Sender {
    pub fn new(conn: ConnHandle, seed: u64, len: u64) -> Self {
        Sender {
            conn,
            seed,
            len,
            off: 0,
            buf: vec![0u8; 1 << 16],
            closed: false,
        }
    }

    /// Push as much as the engine takes; close after the last byte.
    pub fn feed(&mut self, e: &mut Engine) {
        while self.off < self.len {
            let cap = e.send_capacity(self.conn).unwrap_or(0);
            if cap == 0 {
                break;
            }
            let n = ((self.len - self.off) as usize)
                .min(self.buf.len())
                .min(cap);
            fill(self.seed, self.off, &mut self.buf[..n]);
            let k = e.send(self.conn, &self.buf[..n]).expect("send");
            self.off += k as u64;
            if k < n {
                break;
            }
        }
        if self.off == self.len && !self.closed {
            e.close(self.conn).expect("close");
            self.closed = true;
        }
    }
}

/// Engine side receiver: hashes everything read.
pub struct Receiver {
    pub conn: ConnHandle,
    pub n: u64,
    h: Sha256,
    buf: Vec<u8>,
}

impl Receiver {
    pub fn new(conn: ConnHandle) -> Self {
        Receiver {
            conn,
            n: 0,
            h: Sha256::new(),
            buf: vec![0u8; 1 << 16],
        }
    }
    pub fn drain(&mut self, e: &mut Engine) {
        while let Ok(k) = e.recv(self.conn, &mut self.buf) {
            if k == 0 {
                break;
            }
            self.h.update(&self.buf[..k]);
            self.n += k as u64;
        }
    }
    pub fn sha(&self) -> [u8; 32] {
        self.h.clone().finalize().into()
    }
}

/// Every frame of a pcap file.
pub fn read_pcap(path: &std::path::Path) -> Vec<Vec<u8>> {
    let f = std::fs::File::open(path).expect("open pcap");
    let mut r = pcap_file::pcap::PcapReader::new(f).expect("pcap header");
    let mut out = vec![];
    while let Some(p) = r.next_packet() {
        out.push(p.expect("pcap record").data.into_owned());
    }
    out
}
