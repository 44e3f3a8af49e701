//! Test helpers: a raw vhost-user frontend that replays QEMU's message order, memfd guest
//! memory, and the driver side of split virtqueues (written here for tests; not virtio-queue's
//! mock). Shared by the device's integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub const FIXTURE: &str = include_str!("../fixtures/qemu10-vhost-user-net-queues2.txt");

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const GUEST_IP: [u8; 4] = [192, 0, 2, 2];
pub const PEER_IP: [u8; 4] = [192, 0, 2, 1];
pub const QUEUE_SIZE: u16 = 256;

/// Guest RAM: two memfd regions like QEMU's (below and above 4 GiB), mapped here too.
pub struct GuestRam {
    pub files: Vec<File>,
    /// (guest physical address, size, VMM virtual address we claim in the mem table)
    pub regions: Vec<(u64, u64, u64)>,
    pub mem: GuestMemoryMmap,
}

pub const RAM0: (u64, u64, u64) = (0, 4 << 20, 0x7f00_0000_0000);
pub const RAM1: (u64, u64, u64) = (1 << 32, 1 << 20, 0x7f10_0000_0000);

fn memfd(name: &str, size: u64) -> File {
    let cname = std::ffi::CString::new(name).expect("memfd name");
    // SAFETY: memfd_create takes a valid NUL-terminated name and flags; on success the
    // returned descriptor is new and owned by nobody else, so File may own it.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: see above, fd is a fresh descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("memfd set_len");
    f
}

impl GuestRam {
    pub fn new() -> GuestRam {
        let regions = vec![RAM0, RAM1];
        let files: Vec<File> = regions
            .iter()
            .enumerate()
            .map(|(i, r)| memfd(&format!("guest-ram-{i}"), r.1))
            .collect();
        let ranges: Vec<(GuestAddress, usize, Option<FileOffset>)> = regions
            .iter()
            .zip(&files)
            .map(|(r, f)| {
                (
                    GuestAddress(r.0),
                    r.1 as usize,
                    Some(FileOffset::new(f.try_clone().expect("dup memfd"), 0)),
                )
            })
            .collect();
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).expect("map guest ram");
        GuestRam {
            files,
            regions,
            mem,
        }
    }

    /// The VMM virtual address QEMU would use for `gpa`.
    pub fn vmm_addr(&self, gpa: u64) -> u64 {
        for (base, size, va) in &self.regions {
            if gpa >= *base && gpa < base + size {
                return va + (gpa - base);
            }
        }
        panic!("gpa {gpa:#x} not in guest RAM");
    }

    /// SET_MEM_TABLE payload: num_regions, padding, then {gpa, size, userspace addr, offset}.
    pub fn mem_table_payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&(self.regions.len() as u32).to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for (gpa, size, va) in &self.regions {
            for v in [*gpa, *size, *va, 0u64] {
                p.extend_from_slice(&v.to_le_bytes());
            }
        }
        p
    }
}

/// Driver side of one split virtqueue in `GuestRam` region 0.
pub struct Ring {
    pub index: u32,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
    pub kick: EventFd,
    pub call: EventFd,
    pub err: EventFd,
}

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

impl Ring {
    pub fn new(index: u32) -> Ring {
        let base = 0x10_0000 + u64::from(index) * 0x4000;
        Ring {
            index,
            size: QUEUE_SIZE,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            kick: EventFd::new(EFD_NONBLOCK).expect("kick eventfd"),
            call: EventFd::new(EFD_NONBLOCK).expect("call eventfd"),
            err: EventFd::new(EFD_NONBLOCK).expect("err eventfd"),
        }
    }

    /// Put a chain of raw descriptors (addr, len, flags without NEXT) and publish it.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, flags)) in bufs.iter().enumerate() {
            let d = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let last = i + 1 == bufs.len();
            let f = flags | if last { 0 } else { VRING_DESC_F_NEXT };
            let at = self.desc + u64::from(d) * 16;
            mem.write_obj(*addr, GuestAddress(at)).unwrap();
            mem.write_obj(*len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(f, GuestAddress(at + 12)).unwrap();
            mem.write_obj(self.next_desc, GuestAddress(at + 14))
                .unwrap();
        }
        let slot = self.avail + 4 + u64::from(self.avail_idx % self.size) * 2;
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        fence(Ordering::SeqCst);
        head
    }

    pub fn notify(&self) {
        self.kick.write(1).expect("kick");
    }

    /// New used entries (id, len) since the last call.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        fence(Ordering::SeqCst);
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.last_used != idx {
            let at = self.used + 4 + u64::from(self.last_used % self.size) * 8;
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }

    /// Wait (bounded; a hang guard, not a timing assertion) until `n` new used entries exist.
    pub fn wait_used(&mut self, mem: &GuestMemoryMmap, n: usize, what: &str) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        loop {
            got.extend(self.take_used(mem));
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: expected {n} used entries on queue {}, saw {}: {got:?}",
                self.index,
                got.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Request codes by QEMU's names.
pub fn request_code(name: &str) -> u32 {
    match name {
        "GET_FEATURES" => 1,
        "SET_FEATURES" => 2,
        "SET_OWNER" => 3,
        "SET_MEM_TABLE" => 5,
        "SET_VRING_NUM" => 8,
        "SET_VRING_ADDR" => 9,
        "SET_VRING_BASE" => 10,
        "GET_VRING_BASE" => 11,
        "SET_VRING_KICK" => 12,
        "SET_VRING_CALL" => 13,
        "SET_VRING_ERR" => 14,
        "GET_PROTOCOL_FEATURES" => 15,
        "SET_PROTOCOL_FEATURES" => 16,
        "GET_QUEUE_NUM" => 17,
        "SET_VRING_ENABLE" => 18,
        other => panic!("fixture: unknown request {other}"),
    }
}

/// One fixture line.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub code: u32,
    pub flags: u32,
    pub size: usize,
    pub fds: usize,
    pub fields: Vec<(String, u64)>,
}

impl Step {
    pub fn field(&self, k: &str) -> u64 {
        self.fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("fixture line {} has no {k}", self.name))
    }
}

fn parse_num(v: &str) -> u64 {
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).expect("hex"),
        None => v.parse().expect("decimal"),
    }
}

pub fn parse_fixture(text: &str) -> Vec<Step> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next().expect("name").to_string();
            let mut step = Step {
                code: request_code(&name),
                name,
                flags: 0,
                size: 0,
                fds: 0,
                fields: Vec::new(),
            };
            for kv in parts {
                let (k, v) = kv.split_once('=').expect("k=v");
                let v = parse_num(v);
                match k {
                    "flags" => step.flags = v as u32,
                    "size" => step.size = v as usize,
                    "fds" => step.fds = v as usize,
                    _ => step.fields.push((k.to_string(), v)),
                }
            }
            step
        })
        .collect()
}

/// A raw vhost-user frontend over a unix socket, as QEMU is.
pub struct Frontend {
    pub sock: UnixStream,
    pub ram: GuestRam,
    pub rings: Vec<Ring>,
    pub protocol_features: u64,
}

pub const FLAG_NEED_REPLY: u32 = 0x8;
pub const FLAG_REPLY: u32 = 0x4;
const PROTOCOL_F_REPLY_ACK: u64 = 0x8;

impl Frontend {
    pub fn connect(path: &Path, num_queues: u32) -> Frontend {
        let deadline = Instant::now() + Duration::from_secs(20);
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "connect {}: {e}", path.display());
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        Frontend {
            sock,
            ram: GuestRam::new(),
            rings: (0..num_queues).map(Ring::new).collect(),
            protocol_features: 0,
        }
    }

    pub fn send(&self, code: u32, flags: u32, payload: &[u8], fds: &[RawFd]) {
        let mut hdr = Vec::with_capacity(12 + payload.len());
        hdr.extend_from_slice(&code.to_le_bytes());
        hdr.extend_from_slice(&flags.to_le_bytes());
        hdr.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        hdr.extend_from_slice(payload);
        let n = self
            .sock
            .send_with_fds(&[&hdr[..]], fds)
            .unwrap_or_else(|e| panic!("send request {code}: {e}"));
        assert_eq!(n, hdr.len(), "short send of request {code}");
    }

    /// Read one reply and check it answers `code`.
    pub fn reply(&mut self, code: u32) -> Vec<u8> {
        let mut hdr = [0u8; 12];
        (&self.sock)
            .read_exact(&mut hdr)
            .unwrap_or_else(|e| panic!("reply to request {code}: {e}"));
        let got = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        assert_eq!(
            got, code,
            "reply for request {got}, expected a reply to {code}"
        );
        assert_eq!(
            flags & FLAG_REPLY,
            FLAG_REPLY,
            "reply flags {flags:#x} lack REPLY"
        );
        let mut body = vec![0u8; size];
        (&self.sock).read_exact(&mut body).expect("reply body");
        body
    }

    fn u64_reply(&mut self, code: u32) -> u64 {
        let b = self.reply(code);
        assert_eq!(
            b.len(),
            8,
            "reply to {code} has {} bytes, expected 8",
            b.len()
        );
        u64::from_le_bytes(b[..8].try_into().unwrap())
    }

    /// Play one fixture step: build the payload and fds QEMU sends, read the replies QEMU
    /// waits for, and check them.
    pub fn play(&mut self, s: &Step) {
        let mut payload = Vec::new();
        let mut fds: Vec<RawFd> = Vec::new();
        match s.name.as_str() {
            "GET_FEATURES" | "GET_PROTOCOL_FEATURES" | "GET_QUEUE_NUM" | "SET_OWNER" => {}
            "SET_PROTOCOL_FEATURES" | "SET_FEATURES" => {
                payload.extend_from_slice(&s.field("bits").to_le_bytes());
            }
            "SET_VRING_CALL" | "SET_VRING_ERR" | "SET_VRING_KICK" => {
                let i = s.field("u64");
                let ring = &self.rings[i as usize];
                let fd = match s.name.as_str() {
                    "SET_VRING_CALL" => ring.call.as_raw_fd(),
                    "SET_VRING_ERR" => ring.err.as_raw_fd(),
                    _ => ring.kick.as_raw_fd(),
                };
                payload.extend_from_slice(&i.to_le_bytes());
                fds.push(fd);
            }
            "SET_VRING_ENABLE" | "SET_VRING_NUM" | "SET_VRING_BASE" | "GET_VRING_BASE" => {
                payload.extend_from_slice(&(s.field("index") as u32).to_le_bytes());
                payload.extend_from_slice(&(s.field("num") as u32).to_le_bytes());
            }
            "SET_VRING_ADDR" => {
                let r = &self.rings[s.field("index") as usize];
                payload.extend_from_slice(&r.index.to_le_bytes());
                payload.extend_from_slice(&0u32.to_le_bytes());
                for gpa in [r.desc, r.used, r.avail] {
                    payload.extend_from_slice(&self.ram.vmm_addr(gpa).to_le_bytes());
                }
                payload.extend_from_slice(&0u64.to_le_bytes());
            }
            "SET_MEM_TABLE" => {
                payload = self.ram.mem_table_payload();
                fds = self.ram.files.iter().map(|f| f.as_raw_fd()).collect();
            }
            other => panic!("fixture: no builder for {other}"),
        }
        assert_eq!(
            payload.len(),
            s.size,
            "{}: payload size differs from QEMU's",
            s.name
        );
        assert_eq!(fds.len(), s.fds, "{}: fd count differs from QEMU's", s.name);
        self.send(s.code, s.flags, &payload, &fds);

        // Replies QEMU waits for.
        match s.name.as_str() {
            "GET_FEATURES" => {
                let f = self.u64_reply(s.code);
                assert_eq!(
                    f,
                    chimney_device::features::OFFERED_FEATURES,
                    "GET_FEATURES"
                );
            }
            "GET_PROTOCOL_FEATURES" => {
                let f = self.u64_reply(s.code);
                assert_eq!(f, 0x9, "GET_PROTOCOL_FEATURES: MQ|REPLY_ACK only");
            }
            "GET_QUEUE_NUM" => {
                let n = self.u64_reply(s.code);
                assert_eq!(n, self.rings.len() as u64, "GET_QUEUE_NUM");
            }
            "GET_VRING_BASE" => {
                let b = self.reply(s.code);
                assert_eq!(b.len(), 8, "GET_VRING_BASE reply size");
            }
            _ => {}
        }
        if s.name == "SET_PROTOCOL_FEATURES" {
            self.protocol_features = s.field("bits");
        }
        if s.flags & FLAG_NEED_REPLY != 0
            && self.protocol_features & PROTOCOL_F_REPLY_ACK != 0
            && !s.name.starts_with("GET_")
        {
            let status = self.u64_reply(s.code);
            assert_eq!(
                status, 0,
                "{} (flags {:#x}) answered failure",
                s.name, s.flags
            );
        }
    }

    /// Check that nothing unexpected (e.g. a reply to a replayed message) is waiting.
    pub fn assert_no_pending_bytes(&self) {
        self.sock.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 64];
        let r = (&self.sock).read(&mut b);
        self.sock.set_nonblocking(false).expect("blocking");
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(n) => panic!("unexpected {n} bytes from the device: {:?}", &b[..n]),
            Err(e) => panic!("socket error: {e}"),
        }
    }
}

/// An Ethernet ARP request from the guest for `target`.
pub fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/UDP frame from the guest (UDP checksum 0 = none, allowed on IPv4).
pub fn udp_frame(dst_mac: [u8; 6], dst_port: u16, src_port: u16, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 8 + data.len();
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&PEER_IP);
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(data);
    f
}

/// A unique socket path for a test.
pub fn socket_path(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "chimney-{tag}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

pub const RX_BUF_BASE: u64 = 0x20_0000;
pub const RX_BUF_LEN: u32 = 2048;
pub const TX_BUF_BASE: u64 = 0x30_0000;

/// Rx buffers posted on queue 0, by head index.
pub struct RxBuffers {
    by_head: HashMap<u16, u64>,
    next_slot: u64,
}

impl RxBuffers {
    pub fn new() -> Self {
        RxBuffers {
            by_head: HashMap::new(),
            next_slot: 0,
        }
    }

    pub fn post(&mut self, fe: &mut Frontend, n: usize) {
        for _ in 0..n {
            let gpa = RX_BUF_BASE + (self.next_slot % 64) * 0x1000;
            self.next_slot += 1;
            let head = fe.rings[0].add_chain(&fe.ram.mem, &[(gpa, RX_BUF_LEN, VRING_DESC_F_WRITE)]);
            self.by_head.insert(head, gpa);
        }
        fe.rings[0].notify();
    }

    /// Wait for a received frame matching `pred`; returns (virtio-net header, frame).
    /// Re-posts a buffer for each one used.
    pub fn wait_frame(
        &mut self,
        fe: &mut Frontend,
        what: &str,
        pred: impl Fn(&[u8]) -> bool,
    ) -> ([u8; 12], Vec<u8>) {
        let mut seen = Vec::new();
        for _ in 0..64 {
            let used = fe.rings[0].wait_used(&fe.ram.mem, 1, what);
            let mut hit = None;
            for (id, len) in used {
                let gpa = *self
                    .by_head
                    .get(&(id as u16))
                    .unwrap_or_else(|| panic!("{what}: used id {id} was never posted"));
                let mut buf = vec![0u8; len as usize];
                fe.ram.mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
                assert!(len >= 12, "{what}: used length {len} < header");
                let mut hdr = [0u8; 12];
                hdr.copy_from_slice(&buf[..12]);
                let frame = buf[12..].to_vec();
                if hit.is_none() && pred(&frame) {
                    hit = Some((hdr, frame));
                } else {
                    seen.push(frame.len());
                }
            }
            self.post(fe, 1);
            if let Some(h) = hit {
                return h;
            }
        }
        panic!(
            "{what}: no matching frame among {} received: lengths {seen:?}",
            seen.len()
        );
    }
}

pub fn send_tx(fe: &mut Frontend, slot: u64, frame: &[u8]) {
    let gpa = TX_BUF_BASE + slot * 0x1_0000;
    let mut buf = vec![0u8; 12];
    buf.extend_from_slice(frame);
    fe.ram.mem.write_slice(&buf, GuestAddress(gpa)).unwrap();
    fe.rings[1].add_chain(&fe.ram.mem, &[(gpa, buf.len() as u32, 0)]);
    fe.rings[1].notify();
}

pub fn is_arp_reply_from_peer(f: &[u8]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == PEER_IP
}

/// ARP for the peer through the device; returns the peer's MAC.
pub fn arp_peer(fe: &mut Frontend, rx: &mut RxBuffers) -> [u8; 6] {
    send_tx(fe, 0, &arp_request(PEER_IP));
    let tx_used = fe.rings[1].wait_used(&fe.ram.mem, 1, "ARP request on tx 1");
    assert_eq!(
        tx_used[0].1, 0,
        "tx used length must be 0 (device writes nothing)"
    );
    let (hdr, f) = rx.wait_frame(fe, "ARP reply from the kernel", is_arp_reply_from_peer);
    assert_eq!(
        u16::from_le_bytes([hdr[10], hdr[11]]),
        1,
        "num_buffers of a one-buffer frame (MRG_RXBUF acked)"
    );
    assert_eq!(&f[0..6], &GUEST_MAC, "ARP reply destination");
    assert_eq!(&f[38..42], &GUEST_IP, "ARP reply target IP");
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&f[22..28]);
    mac
}

/// Play the fixture up to (not including) the first GET_VRING_BASE, i.e. until QEMU has set
/// everything up and enabled all four rings. Returns the remaining steps.
pub fn set_up(fe: &mut Frontend) -> Vec<Step> {
    let steps = parse_fixture(FIXTURE);
    let early_enables = steps
        .iter()
        .take_while(|s| s.name != "SET_FEATURES")
        .filter(|s| s.name == "SET_VRING_ENABLE")
        .count();
    assert_eq!(
        early_enables, 18,
        "fixture should hold QEMU's 18 early enables"
    );
    let split = steps
        .iter()
        .position(|s| s.name == "GET_VRING_BASE")
        .expect("fixture has GET_VRING_BASE");
    for s in &steps[..split] {
        fe.play(s);
    }
    fe.assert_no_pending_bytes();
    steps[split..].to_vec()
}
