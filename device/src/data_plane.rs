//! The data plane's I/O glue for the backend (thin, DESIGN.md rule 4): the shared
//! [`DataPath`], one [`DataRing`] per data pair, the wire sink (engine frames → TAP with a
//! virtio-net header: TSO super-frames and partial checksums left to the kernel), a notify
//! eventfd (the NIC thread switched frames to the data path: the ring thread must deliver
//! results) and a timerfd for the engines' timers.
//!
//! Threads: the NIC thread calls [`DataPlane::switch_frame`] for every frame from the TAP;
//! the ring thread calls [`DataPlane::serve_pair`] on data queue kicks and
//! [`DataPlane::on_wakeup`] when the notify or timer fd fires, then serves every data pair and
//! pumps the control ring's events.

use crate::control_ring::{RingActivity, SharedDataPath};
use crate::data_path::{now, DataPath};
use crate::data_ring::DataRing;
use chimney_netstack::impair::{ImpairConfig, Impairment};
use chimney_netstack::{Transmit, TxOffload};
use chimney_wire::{PcapWriter, Tap, VnetHeader, VNET_HDR_LEN};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

/// Options of the data plane (device command line).
#[derive(Debug, Clone, Default)]
pub struct DataPlaneOptions {
    /// Seeded impairment of offloaded traffic, both directions (engine → TAP and TAP →
    /// engine); TSO is off then, so loss and reordering hit single segments.
    pub impair: Option<(ImpairConfig, u64)>,
    /// Vendor policy from `--policy` (docs/vendor-guide.md).
    pub policy: Option<crate::policy::FilePolicy>,
}

/// Both directions of the impairment: frames held until due.
struct Impaired {
    out: Impairment,
    inb: Impairment,
    tap: Option<Arc<Tap>>,
    pcap: Option<Arc<PcapWriter>>,
}

impl Impaired {
    /// Write due outgoing frames (plain, full checksums) to the TAP.
    fn release_out(&mut self, now: chimney_netstack::Instant) {
        while let Some(f) = self.out.pop(now) {
            write_tap(&self.tap, &self.pcap, &VnetHeader::default(), &f);
            self.out.recycle(f);
        }
    }
}

fn write_tap(
    tap: &Option<Arc<Tap>>,
    pcap: &Option<Arc<PcapWriter>>,
    hdr: &VnetHeader,
    frame: &[u8],
) {
    let Some(tap) = tap else { return };
    if let Some(p) = pcap {
        let _ = p.record(frame);
    }
    // Header and frame go out in one writev: no copy of the (up to 64 KB TSO) frame
    // (docs/benchmarks.md: the copy was ~20 % of the device's CPU per GiB sent).
    match tap.write_frame(hdr, frame) {
        Ok(true) => {}
        Ok(false) => tracing::debug!("offload tx: TAP queue full, frame dropped"),
        Err(e) => tracing::debug!(error = %e, "offload tx: TAP write"),
    }
}

pub struct DataPlane {
    dp: SharedDataPath,
    impaired: Option<Arc<Mutex<Impaired>>>,
    rings: Vec<Mutex<DataRing>>,
    notify: EventFd,
    timer: Mutex<TimerFd>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("data_pairs", &self.rings.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The 12-byte header the TAP needs for an engine frame.
fn vnet_header(t: &Transmit<'_>) -> VnetHeader {
    let mut h = VnetHeader::default();
    if let Some((start, off)) = t.csum_partial {
        h.flags = VnetHeader::F_NEEDS_CSUM;
        h.csum_start = start;
        h.csum_offset = off;
    }
    if let Some(g) = t.gso {
        h.gso_type = if g.ipv6 {
            VnetHeader::GSO_TCPV6
        } else {
            VnetHeader::GSO_TCPV4
        };
        h.gso_size = g.mss;
        h.hdr_len = g.header_len;
    }
    h
}

impl DataPlane {
    /// `data_pairs`: queue pairs beyond pair 1. Engine frames go to `tap` (and `pcap`).
    pub fn new(
        mac: [u8; 6],
        data_pairs: u16,
        tap: Option<Arc<Tap>>,
        pcap: Option<Arc<PcapWriter>>,
        opts: &DataPlaneOptions,
    ) -> io::Result<DataPlane> {
        let impaired = opts.impair.map(|(cfg, seed)| {
            tracing::info!(
                seed,
                ?cfg,
                "offloaded traffic impaired (seed printed for replay)"
            );
            Arc::new(Mutex::new(Impaired {
                out: Impairment::new(cfg, seed),
                inb: Impairment::new(cfg, seed.rotate_left(32) ^ 0x5eed),
                tap: tap.clone(),
                pcap: pcap.clone(),
            }))
        });
        let imp = impaired.clone();
        let sink: crate::data_path::WireSink = Box::new(move |t: &Transmit<'_>| match &imp {
            Some(imp) => {
                let now = now();
                let mut g = lock(imp);
                g.out.push(now, t.frame);
                g.release_out(now);
            }
            None => write_tap(&tap, &pcap, &vnet_header(t), t.frame),
        });
        // The kernel cuts TSO super-frames and fills partial checksums (IFF_VNET_HDR);
        // with impairment, plain frames with full checksums.
        let offload = TxOffload {
            tso: impaired.is_none(),
            checksum: impaired.is_none(),
        };
        let mut dp = DataPath::new(mac, data_pairs, offload, sink);
        if let Some(p) = &opts.policy {
            dp.set_policy(Box::new(p.clone()));
        }
        let timer = TimerFd::new()?;
        // SAFETY: fcntl on a descriptor we own; only the O_NONBLOCK flag changes, so that
        // `on_wakeup` can read it when only the notify fd fired.
        let rc = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DataPlane {
            dp: Arc::new(Mutex::new(dp)),
            impaired,
            rings: (0..data_pairs)
                .map(|i| Mutex::new(DataRing::new(i)))
                .collect(),
            notify: EventFd::new(EFD_NONBLOCK)?,
            timer: Mutex::new(timer),
        })
    }

    pub fn shared(&self) -> SharedDataPath {
        self.dp.clone()
    }

    pub fn data_pairs(&self) -> u16 {
        self.rings.len() as u16
    }

    pub fn notify_fd(&self) -> RawFd {
        self.notify.as_raw_fd()
    }

    pub fn timer_fd(&self) -> RawFd {
        lock(&self.timer).as_raw_fd()
    }

    /// NIC thread: a frame from the TAP (12-byte virtio-net header first). True when it
    /// belonged to an offloaded connection and went to its engine (the logical switch).
    pub fn switch_frame(&self, with_hdr: &[u8]) -> bool {
        let Some(frame) = with_hdr.get(VNET_HDR_LEN..) else {
            return false;
        };
        let mut dp = lock(&self.dp);
        let Some(h) = dp.classify(frame) else {
            return false;
        };
        // Checksums: DATA_VALID = checked by the kernel; NEEDS_CSUM = local, not computed.
        let checked = with_hdr[0] & (VnetHeader::F_DATA_VALID | VnetHeader::F_NEEDS_CSUM) != 0;
        match &self.impaired {
            Some(imp) => {
                let now = now();
                let mut g = lock(imp);
                g.inb.push(now, frame);
                while let Some(f) = g.inb.pop(now) {
                    if let Some(h) = dp.classify(&f) {
                        dp.handle_frame(now, h, &f, checked);
                    }
                    g.inb.recycle(f);
                }
            }
            None => {
                // A large receive from the TAP counts as the segments it stands for (§3.11).
                let gso = (with_hdr[1] & !VnetHeader::GSO_ECN != VnetHeader::GSO_NONE)
                    .then(|| u16::from_le_bytes([with_hdr[4], with_hdr[5]]));
                dp.handle_frame_gso(now(), h, frame, checked, gso)
            }
        }
        drop(dp);
        let _ = self.notify.write(1);
        true
    }

    /// Ring thread: the notify or timer fd fired. Runs due timers and flushes; the caller
    /// then serves every pair and pumps the control ring.
    pub fn on_wakeup(&self) {
        let _ = self.notify.read();
        let mut t = lock(&self.timer);
        let _ = t.wait_nonblocking();
        drop(t);
        let now = now();
        let mut dp = lock(&self.dp);
        if let Some(imp) = &self.impaired {
            // Held frames that are due: incoming ones to their engines, outgoing to the TAP.
            let mut g = lock(imp);
            while let Some(f) = g.inb.pop(now) {
                if let Some(h) = dp.classify(&f) {
                    dp.handle_frame(now, h, &f, true);
                }
                g.inb.recycle(f);
            }
            g.release_out(now);
        }
        dp.handle_timeout(now);
        dp.flush(now);
        drop(dp);
        self.rearm_timer();
    }

    /// Ring thread: serve data pair `index` (0-based among data pairs).
    pub fn serve_pair<M: GuestMemory>(
        &self,
        mem: &M,
        index: u16,
        tx: &mut Queue,
        rx: &mut Queue,
    ) -> RingActivity {
        let Some(ring) = self.rings.get(usize::from(index)) else {
            return RingActivity::default();
        };
        let act = lock(ring).process(mem, tx, rx, &self.dp);
        self.rearm_timer();
        act
    }

    /// Arm the timerfd for the earliest engine deadline.
    pub fn rearm_timer(&self) {
        let mut next = lock(&self.dp).poll_timeout();
        if let Some(imp) = &self.impaired {
            let g = lock(imp);
            for t in [g.inb.next_release(), g.out.next_release()]
                .into_iter()
                .flatten()
            {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        let mut t = lock(&self.timer);
        let r = match next {
            Some(at) => {
                let d = at
                    .saturating_duration_since(now())
                    .max(Duration::from_micros(50));
                t.reset(d, None)
            }
            None => t.clear(),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "timerfd");
        }
    }
}

/// Non-blocking read of the timerfd (it is created blocking by vmm-sys-util).
trait WaitNonBlocking {
    fn wait_nonblocking(&mut self) -> io::Result<u64>;
}

impl WaitNonBlocking for TimerFd {
    fn wait_nonblocking(&mut self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into a valid 8-byte buffer from a timerfd we own (set
        // O_NONBLOCK in `DataPlane::new`).
        let n = unsafe { libc::read(self.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        if n == 8 {
            Ok(u64::from_ne_bytes(buf))
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Epoll token of the notify eventfd in the ring thread (above the queue, TAP and stop
/// tokens of `backend`).
pub fn notify_token(num_queues: usize) -> u64 {
    num_queues as u64 + 3
}

/// Epoll token of the engine timerfd in the ring thread.
pub fn timer_token(num_queues: usize) -> u64 {
    num_queues as u64 + 4
}

fn ring_live(v: &VringRwLock) -> bool {
    let g = v.get_ref();
    g.get_queue().ready() && g.is_enabled()
}

fn signal(v: &VringRwLock) {
    match v.needs_notification() {
        Ok(false) => {}
        Ok(true) => {
            if let Err(e) = v.signal_used_queue() {
                tracing::warn!(error = %e, "data ring: signal used queue");
            }
        }
        Err(e) => tracing::warn!(error = %e, "data ring: needs_notification"),
    }
}

/// Ring thread, everything beyond the control pair: `event` is the thread-relative event
/// (0/1 = control rx/tx, 2.. = data queues) or one of the notify/timer tokens; `vrings` are
/// the ring thread's vrings (control rx, control tx, data rx 0, data tx 0, …). Serves the
/// kicked pair (or all pairs after a wakeup) and pumps data-path events onto control rx.
pub fn serve_ring_event<M: GuestMemory>(
    plane: &DataPlane,
    control: &Mutex<crate::control_ring::ControlRing>,
    mem: &M,
    event: u16,
    vrings: &[VringRwLock],
    num_queues: usize,
) {
    let e = u64::from(event);
    let pairs: Vec<u16> = if e == notify_token(num_queues) || e == timer_token(num_queues) {
        plane.on_wakeup();
        (0..plane.data_pairs()).collect()
    } else if event >= 2 {
        vec![(event - 2) / 2]
    } else {
        (0..plane.data_pairs()).collect()
    };
    for i in pairs {
        let base = 2 + 2 * usize::from(i);
        let (Some(rx), Some(tx)) = (vrings.get(base), vrings.get(base + 1)) else {
            continue;
        };
        if !ring_live(rx) || !ring_live(tx) {
            continue;
        }
        let act = {
            let mut txg = tx.get_mut();
            let mut rxg = rx.get_mut();
            plane.serve_pair(mem, i, txg.get_queue_mut(), rxg.get_queue_mut())
        };
        if act.tx_used {
            signal(tx);
        }
        if act.rx_used {
            signal(rx);
        }
    }
    // Events the data path raised go out on control rx.
    if let Some(crx) = vrings.first() {
        if ring_live(crx) {
            let act = {
                let mut g = crx.get_mut();
                control
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pump_events(mem, g.get_queue_mut())
            };
            if act.rx_used {
                signal(crx);
            }
        }
    }
}

/// Parse `--impair` (`key=value,…`); errors name the key. Without `seed=` a random seed is
/// chosen and logged.
pub fn parse_impair(spec: &str) -> Result<(ImpairConfig, u64), String> {
    let mut cfg = ImpairConfig::default();
    let mut seed = None;
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected key=value"))?;
        let prob = |v: &str| -> Result<f64, String> {
            let p: f64 = v
                .parse()
                .map_err(|_| format!("{k}: {v:?} is not a number"))?;
            if (0.0..=1.0).contains(&p) {
                Ok(p)
            } else {
                Err(format!("{k}: {p} is not a probability in [0, 1]"))
            }
        };
        let ms = |v: &str| -> Result<Duration, String> {
            let n: u64 = v
                .parse()
                .map_err(|_| format!("{k}: {v:?} is not a whole number of ms"))?;
            if n > 60_000 {
                return Err(format!("{k}: {n} ms is more than 60 s"));
            }
            Ok(Duration::from_millis(n))
        };
        match k {
            "loss" => cfg.loss = prob(v)?,
            "reorder" => cfg.reorder = prob(v)?,
            "duplicate" => cfg.duplicate = prob(v)?,
            "corrupt" => cfg.corrupt = prob(v)?,
            "reorder-delay-ms" => cfg.reorder_delay = ms(v)?,
            "delay-ms" => cfg.delay = ms(v)?,
            "jitter-ms" => cfg.jitter = ms(v)?,
            "seed" => seed = Some(v.parse().map_err(|_| format!("seed: {v:?} is not a u64"))?),
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    if cfg.reorder > 0.0 && cfg.reorder_delay.is_zero() {
        cfg.reorder_delay = Duration::from_millis(2);
    }
    let seed = seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id())
    });
    Ok((cfg, seed))
}

#[cfg(test)]
mod tests {
    use super::parse_impair;

    #[test]
    fn impair_spec_parses_and_errors_name_the_key() {
        let (c, s) = parse_impair("loss=0.05,reorder=0.05,seed=7").unwrap();
        assert_eq!((c.loss, c.reorder, s), (0.05, 0.05, 7));
        assert_eq!(c.reorder_delay.as_millis(), 2);
        assert!(parse_impair("loss=2").unwrap_err().starts_with("loss:"));
        assert!(parse_impair("lose=0.1").unwrap_err().contains("\"lose\""));
        assert!(parse_impair("delay-ms=x")
            .unwrap_err()
            .starts_with("delay-ms:"));
    }
}
