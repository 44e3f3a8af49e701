//! Shared rig of the device-feature data-path tests (datapath_cached, datapath_stats_events,
//! datapath_vlan): a namespace with the Linux peer on a TAP, the real device process, the
//! in-process frontend with the host stack on pair 0, the control session, one data pair,
//! one connection established by the host stack and offloaded; plus a raw capture of
//! every frame on the peer's TAP (AF_PACKET in the namespace, 802.1Q tags from the
//! kernel's auxdata). Needs root.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use chimney_abi::data_io::{DataRecord, DataRequest, DataRxKind};
use chimney_abi::{
    CompletionBody, DeviceHandle, Event, NdisStatus, ObjectState, OffloadParameters, Request,
    RequestBody, TcpCached, TreeBuilder,
};
use chimney_harness::control_session::ControlSession;
use chimney_harness::device_process::DeviceOptions;
use chimney_harness::host_stack::HostStack;
use chimney_harness::{TestBed, TestBedConfig, VmmConfig};
use chimney_miniport::data::{DataChannel, DataConfig};
use chimney_miniport::NicQueues;
use chimney_netstack::{ConnectionExport, EngineConfig};
use chimney_wire::{GUEST_IPV4, GUEST_IPV6, PEER_IPV4, PEER_IPV6};

pub const CONTEXT: u64 = 0x5000;

/// How to build the rig.
#[derive(Default)]
pub struct RigOptions {
    pub v6: bool,
    /// Vendor policy file contents (`--policy`).
    pub policy: Option<String>,
    /// SET_PARAMETERS after the default one (e.g. a small NceStaleTicks).
    pub parameters: Option<OffloadParameters>,
    /// Changes to the exported neighbor / TCP state before the initiate (VLAN, priority).
    pub tweak: Option<fn(&mut chimney_abi::NeighborState, &mut chimney_abi::TcpState)>,
    /// Run in the namespace after the connection is up, before the offload.
    pub before_offload: Option<fn(&TestBed, [u8; 6])>,
}

pub struct Rig {
    pub bed: TestBed,
    pub stack: HostStack,
    pub session: ControlSession,
    pub data: DataChannel,
    pub platform: Arc<chimney_harness::VmmPlatform>,
    /// TCP, path, neighbor handles of the offloaded connection.
    pub handles: [DeviceHandle; 3],
    /// The TCP state as offloaded (cached variables for updates).
    pub tcp_state: chimney_abi::TcpState,
    pub export: ConnectionExport,
    pub peer: TcpStream,
    pub records: Vec<DataRecord>,
    pub events: Vec<Event>,
    next_request: u64,
    _policy_file: Option<TempFile>,
}

struct TempFile(std::path::PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

static PORTS: AtomicU32 = AtomicU32::new(0);

pub fn peer_ip(v6: bool) -> IpAddr {
    if v6 {
        PEER_IPV6.into()
    } else {
        PEER_IPV4.into()
    }
}

impl Rig {
    pub fn start(opts: RigOptions) -> Rig {
        let n = PORTS.fetch_add(1, Ordering::Relaxed);
        let port = 5600 + (n as u16);
        let mut device = DeviceOptions {
            queue_pairs: 3,
            ..DeviceOptions::default()
        };
        let policy_file = opts.policy.as_ref().map(|text| {
            let p = std::env::temp_dir().join(format!(
                "chimney-policy-{}-{}.toml",
                std::process::id(),
                n
            ));
            std::fs::write(&p, text).expect("policy file");
            device.extra_args = vec!["--policy".into(), p.display().to_string()];
            TempFile(p)
        });
        let cfg = TestBedConfig {
            device,
            vmm: VmmConfig {
                ram_bytes: 96 << 20,
                queue_pairs: 3,
                event_idx: true,
            },
            ..TestBedConfig::default()
        };
        let mut bed = TestBed::start(&cfg).expect("namespace + device + VMM");
        let platform = bed.vmm.platform().clone();
        let rx = bed.vmm.create_queue(0, 256).expect("rx 0");
        let tx = bed.vmm.create_queue(1, 256).expect("tx 1");
        let nic = NicQueues::new(&*platform, rx, tx, 2048).expect("pair 0");
        let mac = chimney_device::DeviceConfig::default().mac;
        let mut stack = HostStack::new(
            platform.clone(),
            nic,
            EngineConfig::new(mac, Some(GUEST_IPV4), Some(GUEST_IPV6)),
        )
        .expect("host stack");
        let (mut session, _) = ControlSession::ready(&mut bed.vmm, 256).expect("control");
        if let Some(p) = opts.parameters {
            session.set_parameters(p).expect("parameters");
        }
        let drx = bed.vmm.create_queue(4, 256).expect("rx 4");
        let dtx = bed.vmm.create_queue(5, 256).expect("tx 5");
        let data = DataChannel::new(&*platform, drx, dtx, DataConfig::default()).expect("data");
        let (tx_sock, rx_sock) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ip = peer_ip(opts.v6);
        bed.ns
            .spawn("rig-peer", move || -> std::io::Result<()> {
                let l = TcpListener::bind(SocketAddr::new(ip, port))?;
                let _ = ready_tx.send(());
                let (s, _) = l.accept()?;
                let _ = tx_sock.send(s);
                Ok(())
            })
            .expect("peer");
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("listening");
        let c = stack
            .engine
            .connect(stack.now(), SocketAddr::new(ip, port), None)
            .expect("connect");
        let started = StdInstant::now();
        while stack.engine.state(c).ok() != Some(chimney_netstack::TcpConnectionState::Established)
        {
            stack.poll(Duration::from_millis(5)).expect("poll");
            assert!(started.elapsed() < Duration::from_secs(10), "no connection");
        }
        let peer = rx_sock
            .recv_timeout(Duration::from_secs(10))
            .expect("accepted");
        if let Some(f) = opts.before_offload {
            f(&bed, mac);
        }
        // The host stack's offload, with the test's changes to the state (as HostStack::offload).
        let now = stack.now();
        let export = stack.engine.export(now, c).expect("export");
        stack.poll(Duration::ZERO).expect("flush");
        let (mut nb, p, mut t, mut d) = chimney_device::conversion::from_export(&export);
        nb.konst.dl_source_address = [0; 32];
        if let Some(tweak) = opts.tweak {
            tweak(&mut nb, &mut t);
        }
        let mut b = TreeBuilder::new_object(CONTEXT, ObjectState::Neighbor(nb));
        let pb = b.new_dependent(0, CONTEXT + 1, ObjectState::Path(p));
        let tb = b.new_dependent(pb, CONTEXT + 2, ObjectState::Tcp(t));
        d.block = tb;
        let bytes = Request {
            request_id: 0x0ff1,
            body: RequestBody::Initiate(b.build()),
        }
        .encode_with_data(&[d]);
        let done = session.call_bytes(&bytes, &[]).expect("initiate");
        let CompletionBody::Initiate(r) = &done.body else {
            panic!("initiate: {done:?}");
        };
        let h = |i: u32| {
            r.get(i as usize)
                .filter(|b| b.status == NdisStatus::SUCCESS)
                .and_then(|b| b.handle)
                .unwrap_or_else(|| panic!("initiate block {i}: {r:?}"))
        };
        let handles = [h(tb), h(pb), h(0)];
        Rig {
            bed,
            stack,
            session,
            data,
            platform,
            handles,
            tcp_state: t,
            export,
            peer,
            records: Vec::new(),
            events: Vec::new(),
            next_request: 1,
            _policy_file: policy_file,
        }
    }

    pub fn tcp(&self) -> DeviceHandle {
        self.handles[0]
    }

    /// Move records and events into `self.records` / `self.events` once.
    pub fn pump(&mut self, wait: Duration) {
        self.data.poll(&*self.platform).expect("data poll");
        while let Some(r) = self.data.next_record() {
            self.records.push(r);
        }
        let p = self.session.platform_arc();
        self.session.channel.poll(&*p).expect("control poll");
        while let Some(e) = self.session.channel.next_event() {
            self.events.push(e);
        }
        if !wait.is_zero() {
            self.data.wait(&*self.platform, wait).expect("wait");
        }
        self.stack.poll(Duration::ZERO).expect("poll");
    }

    /// Pump until `done` holds; fails after `limit` with what was seen.
    pub fn until(&mut self, what: &str, limit: Duration, mut done: impl FnMut(&Rig) -> bool) {
        let started = StdInstant::now();
        while !done(self) {
            self.pump(Duration::from_millis(5));
            assert!(
                started.elapsed() < limit,
                "waited {limit:?} in vain for {what}; events {:?}",
                self.events
            );
        }
    }

    /// Post sends of `data` in chunks; returns their request ids.
    pub fn send(&mut self, data: &[u8], chunk: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        let chunk = chunk.min(self.data.max_data());
        for c in data.chunks(chunk) {
            let id = self.next_request;
            self.next_request += 1;
            let req = DataRequest::Send {
                handle: self.tcp(),
                request_id: id,
                data: c.to_vec(),
            };
            loop {
                match self.data.submit(&*self.platform, &req) {
                    Ok(()) => break,
                    Err(chimney_miniport::data::DataError::NoFreeSlot(_)) => {
                        self.pump(Duration::from_millis(1));
                    }
                    Err(e) => panic!("submit: {e}"),
                }
            }
            ids.push(id);
        }
        ids
    }

    pub fn send_completions(&self, status: NdisStatus) -> usize {
        self.records
            .iter()
            .filter(|r| r.kind == DataRxKind::SendComplete && r.status == status)
            .count()
    }

    /// Send `data` and wait until every send completed SUCCESS while the peer reads it all;
    /// returns what the peer read.
    pub fn send_and_peer_reads(&mut self, data: &[u8], chunk: usize) -> Vec<u8> {
        let before = self.send_completions(NdisStatus::SUCCESS);
        let n = self.send(data, chunk).len();
        let mut got = Vec::with_capacity(data.len());
        self.peer
            .set_read_timeout(Some(Duration::from_millis(2)))
            .expect("timeout");
        let started = StdInstant::now();
        let mut buf = vec![0u8; 256 << 10];
        while got.len() < data.len() || self.send_completions(NdisStatus::SUCCESS) < before + n {
            match self.peer.read(&mut buf) {
                Ok(0) => panic!("peer saw EOF after {} bytes", got.len()),
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("peer read: {e}"),
            }
            self.pump(Duration::ZERO);
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "transfer stalled: peer has {} of {} bytes, sends done {}",
                got.len(),
                data.len(),
                self.send_completions(NdisStatus::SUCCESS) - before
            );
        }
        got
    }

    /// The peer writes `data`; wait until all of it was indicated; returns the indicated bytes.
    pub fn peer_writes(&mut self, data: &[u8]) -> Vec<u8> {
        let mut peer = self.peer.try_clone().expect("clone");
        let owned = data.to_vec();
        let w = std::thread::spawn(move || peer.write_all(&owned));
        let indicated = |r: &Rig| -> usize {
            r.records
                .iter()
                .filter(|d| d.kind == DataRxKind::ReceiveIndicate)
                .map(|d| d.data.len())
                .sum()
        };
        let base = indicated(self);
        let mut returned = 0;
        let started = StdInstant::now();
        while indicated(self) < base + data.len() {
            self.pump(Duration::from_millis(2));
            // Give indicated buffers back so the window stays open.
            let ids: Vec<u64> = self.records[returned..]
                .iter()
                .filter(|d| d.kind == DataRxKind::ReceiveIndicate)
                .map(|d| d.request_id)
                .collect();
            returned = self.records.len();
            for id in ids {
                let _ = self.data.submit(
                    &*self.platform,
                    &DataRequest::ReceiveReturn {
                        handle: self.handles[0],
                        indication_id: id,
                    },
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "peer data stalled at {} of {}",
                indicated(self) - base,
                data.len()
            );
        }
        w.join().expect("writer").expect("peer write");
        let all: Vec<u8> = self
            .records
            .iter()
            .filter(|d| d.kind == DataRxKind::ReceiveIndicate)
            .flat_map(|d| d.data.clone())
            .collect();
        all[all.len() - data.len()..].to_vec()
    }

    /// UPDATE the TCP object's cached variables; the completion's block status.
    pub fn update_tcp(&mut self, cached: TcpCached) -> NdisStatus {
        let tree = chimney_abi::Tree {
            blocks: vec![chimney_abi::Block {
                state_type: chimney_abi::OffloadStateType::TcpCached,
                next: None,
                dependent: None,
                host_context: 0,
                body: chimney_abi::UpdateBlock::Object {
                    handle: self.tcp(),
                    cached: Some(chimney_abi::CachedState::Tcp(cached)),
                },
            }],
        };
        let c = self
            .session
            .call(RequestBody::Update(tree))
            .expect("update");
        match &c.body {
            CompletionBody::Update(r) if r.len() == 1 => {
                self.tcp_state.cached = cached;
                r[0].status
            }
            other => panic!("update: unexpected completion {other:?}"),
        }
    }
}

/// One frame seen on the peer's TAP: the bytes as the kernel saw them (802.1Q tag removed
/// by the kernel, given back in `vlan_tci`) and whether the device sent it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub frame: Vec<u8>,
    pub vlan_tci: Option<u16>,
    pub from_device: bool,
}

/// A raw capture of the TAP inside the namespace, running until dropped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Captured>>>,
    drops: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    pub fn start(bed: &TestBed) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let drops = Arc::new(AtomicU32::new(0));
        let (s, f, d) = (stop.clone(), frames.clone(), drops.clone());
        let tap = bed.device_tap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = bed
            .ns
            .spawn("rig-capture", move || {
                capture_loop(&tap, &s, &f, &d, ready_tx)
            })
            .expect("capture thread");
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("capture socket open");
        Capture {
            stop,
            frames,
            drops,
            thread: Some(thread),
        }
    }

    /// Stop capturing; returns every frame and asserts the socket dropped none.
    pub fn finish(mut self) -> Vec<Captured> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        assert_eq!(
            self.drops.load(Ordering::Relaxed),
            0,
            "the capture socket dropped frames: it cannot judge the sequence space"
        );
        self.frames()
    }

    pub fn frames(&self) -> Vec<Captured> {
        self.frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

trait DeviceTap {
    fn device_tap(&self) -> String;
}
impl DeviceTap for TestBed {
    fn device_tap(&self) -> String {
        TestBedConfig::default().topology.tap_name
    }
}

fn capture_loop(
    tap: &str,
    stop: &AtomicBool,
    frames: &Mutex<Vec<Captured>>,
    drops: &AtomicU32,
    ready: std::sync::mpsc::Sender<()>,
) {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned by `fd` right after.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        raw >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(tap).expect("tap name");
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {tap}");
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a valid sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let one: libc::c_int = 1;
    // A large buffer so a fast transfer is captured whole (drops are checked anyway).
    let rcvbuf: libc::c_int = 64 << 20;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: setsockopt with valid option values of the right sizes.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_AUXDATA,
            (&one as *const libc::c_int).cast(),
            4,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&rcvbuf as *const libc::c_int).cast(),
            4,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let _ = ready.send(());
    let mut buf = vec![0u8; 262_144];
    let mut cbuf = [0u64; 64];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: recvmsg into our buffers; all pointers stay valid for the call.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr is valid; the pointers are set to live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: see above.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            continue;
        }
        let n = (n as usize).min(buf.len());
        let mut vlan_tci = None;
        // SAFETY: walking the control messages the kernel wrote into `cbuf`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    let aux = libc::CMSG_DATA(c) as *const libc::tpacket_auxdata;
                    let a = std::ptr::read_unaligned(aux);
                    if a.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                        vlan_tci = Some(a.tp_vlan_tci);
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        // Frames the kernel sends out of the TAP are PACKET_OUTGOING; the device's arrive
        // as incoming.
        let from_device = from.sll_pkttype != libc::PACKET_OUTGOING;
        frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Captured {
                frame: buf[..n].to_vec(),
                vlan_tci,
                from_device,
            });
    }
    // Frames the socket dropped: a capture with drops cannot judge gaps.
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt into a tpacket_stats of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        drops.store(st.tp_drops, Ordering::Relaxed);
    }
}

impl Rig {
    /// Sequence-space check (chimney_device::seqcheck) of what the device sent on the rig's
    /// connection as captured on the TAP: `len` bytes from SND.NXT at offload + `skip`.
    pub fn check_sent_stream(
        &self,
        captured: &[Captured],
        skip: u32,
        len: u64,
    ) -> chimney_device::seqcheck::StreamReport {
        let frames: Vec<Vec<u8>> = captured
            .iter()
            .filter(|c| c.from_device)
            .map(|c| c.frame.clone())
            .collect();
        let local = SocketAddr::new(
            self.export.path.const_.source_address,
            self.export.tcp.const_.local_port,
        );
        let remote = SocketAddr::new(
            self.export.path.const_.destination_address,
            self.export.tcp.const_.remote_port,
        );
        let segs = chimney_device::seqcheck::segments_of(&frames, local, remote);
        let start = self.export.tcp.delegated.snd_nxt.wrapping_add(skip);
        chimney_device::seqcheck::check(&segs, start, len)
    }
}

/// A parsed TCP/IP frame (untagged view, as AF_PACKET gives it).
#[derive(Debug, Clone, Copy)]
pub struct TcpView {
    pub v6: bool,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub flags: u8,
    pub window: u16,
    pub payload: usize,
}

pub fn tcp_view(f: &[u8]) -> Option<TcpView> {
    let et = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let ip = f.get(14..)?;
    let (v6, ttl, l4, ip_len) = match et {
        0x0800 => {
            if *ip.get(9)? != 6 {
                return None;
            }
            let ihl = usize::from(ip[0] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            (false, ip[8], ihl, total)
        }
        0x86DD => {
            if *ip.get(6)? != 6 {
                return None;
            }
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            (true, ip[7], 40, 40 + plen)
        }
        _ => return None,
    };
    let t = ip.get(l4..ip_len.min(ip.len()))?;
    let doff = usize::from(t.get(12)? >> 4) * 4;
    Some(TcpView {
        v6,
        ttl,
        src_port: u16::from_be_bytes([t[0], t[1]]),
        dst_port: u16::from_be_bytes([t[2], t[3]]),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        flags: t[13],
        window: u16::from_be_bytes([t[14], t[15]]),
        payload: t.len().saturating_sub(doff),
    })
}

/// A seeded byte pattern (seed printed by the caller).
pub fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
