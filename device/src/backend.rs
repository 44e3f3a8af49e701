//! The vhost-user backend (`VhostUserBackend` of vhost-user-backend 0.24): features, queue
//! layout, and `handle_event` → the NIC (pair 0) or the control ring (pair 1). Thin glue:
//! the logic lives in `nic` and `control_ring` (STYLE.md "One backend, thin glue").

use crate::control_ring::ControlRing;
use crate::data_plane::{notify_token, serve_ring_event, timer_token, DataPlane};
use crate::features::{offered_protocol_features, NegotiatedNet, OFFERED_FEATURES};
use crate::nic::Nic;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Worker thread 0 serves pair 0 and the TAP; thread 1 serves the control pair and data pairs.
pub const NIC_THREAD: usize = 0;
pub const RING_THREAD: usize = 1;

/// The backend; cloned into each worker thread by the crate (shared state behind an Arc).
#[derive(Clone)]
pub struct NetBackend {
    inner: Arc<Inner>,
}

struct Inner {
    num_queues: usize,
    max_queue_size: usize,
    mac: [u8; 6],
    mem: Mutex<Option<GuestMem>>,
    nic: Mutex<Nic>,
    control: Mutex<ControlRing>,
    /// Data pairs and offloaded connections' engines (queue pairs ≥ 3), shared with the
    /// control ring and the NIC's logical switch.
    data_plane: Option<Arc<DataPlane>>,
    event_idx: AtomicBool,
    /// Written when the connection ends: the worker threads see it and stop (see
    /// `handle_event`). Ours, so it is closed with the backend; the crate's `exit_event`
    /// path would leak one descriptor per thread and connection.
    stop: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the device: take the data as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NetBackend {
    pub fn new(
        queue_pairs: u16,
        max_queue_size: u16,
        mac: [u8; 6],
        nic: Nic,
        control: ControlRing,
    ) -> io::Result<NetBackend> {
        let data_plane = control.data_plane();
        Ok(NetBackend {
            inner: Arc::new(Inner {
                num_queues: 2 * usize::from(queue_pairs.max(1)),
                max_queue_size: usize::from(max_queue_size),
                mac,
                mem: Mutex::new(None),
                nic: Mutex::new(nic),
                control: Mutex::new(control),
                data_plane,
                event_idx: AtomicBool::new(false),
                stop: EventFd::new(EFD_NONBLOCK)?,
            }),
        })
    }

    /// The epoll token of the stop eventfd (in every worker thread).
    pub fn stop_token(&self) -> u64 {
        self.inner.num_queues as u64 + 2
    }

    /// The stop eventfd, to register in each worker's epoll.
    pub fn stop_fd(&self) -> std::os::fd::RawFd {
        self.inner.stop.as_raw_fd()
    }

    /// Register the stop eventfd in every worker's epoll (do it right after creating the
    /// daemon: its drop joins the workers, which only return on the stop event).
    pub fn register_stop(&self, handlers: &[Arc<VringEpollHandler<NetBackend>>]) -> io::Result<()> {
        for h in handlers {
            h.register_listener(self.stop_fd(), EventSet::IN, self.stop_token())?;
        }
        Ok(())
    }

    /// Register the data plane's notify eventfd and timerfd in the ring thread's epoll.
    pub fn register_data_plane(
        &self,
        handlers: &[Arc<VringEpollHandler<NetBackend>>],
    ) -> io::Result<()> {
        let (Some(dp), Some(h)) = (&self.inner.data_plane, handlers.get(RING_THREAD)) else {
            return Ok(());
        };
        let n = self.inner.num_queues;
        h.register_listener(dp.notify_fd(), EventSet::IN, notify_token(n))?;
        h.register_listener(dp.timer_fd(), EventSet::IN, timer_token(n))?;
        Ok(())
    }

    /// Make every worker thread of this connection return.
    pub fn request_stop(&self) {
        if let Err(e) = self.inner.stop.write(1) {
            tracing::error!(error = %e, "stop eventfd");
        }
    }

    /// The epoll token of the TAP fd in the NIC thread (must be above the queue tokens).
    pub fn tap_token(&self) -> u64 {
        self.inner.num_queues as u64 + 1
    }

    fn memory(&self) -> Option<GuestMem> {
        lock(&self.inner.mem).clone()
    }

    /// Pair 0: `vrings` = [rx 0, tx 1] of the NIC thread.
    fn handle_nic(&self, event: u16, vrings: &[VringRwLock]) {
        let (Some(rx), Some(tx)) = (vrings.first(), vrings.get(1)) else {
            return;
        };
        let Some(atomic) = self.memory() else {
            return;
        };
        let mem = atomic.memory();
        let mut nic = lock(&self.inner.nic);
        if u64::from(event) == self.tap_token() || event == 0 {
            if ring_live(rx) {
                let used = nic.process_rx(&*mem, rx.get_mut().get_queue_mut());
                if used {
                    signal(rx, "rx 0");
                }
            } else if self.inner.data_plane.is_some() {
                nic.drain_to_switch(false);
            }
        } else if event == 1 && ring_live(tx) {
            let used = nic.process_tx(&*mem, tx.get_mut().get_queue_mut());
            if used {
                signal(tx, "tx 1");
            }
        }
    }

    /// Pair 1 (queues 2, 3) = events 0, 1 of the ring thread; data pairs (events 2..) are
    /// accepted and left alone for now.
    fn handle_rings(&self, event: u16, vrings: &[VringRwLock]) {
        tracing::trace!(event, "ring thread event");
        let Some(atomic) = self.memory() else {
            return;
        };
        let mem = atomic.memory();
        if event <= 1 {
            self.serve_control(&mem, vrings);
        }
        // Data pairs, data-plane wakeups (notify/timer tokens), and after control work the
        // data path's events onto control rx.
        if let Some(dp) = &self.inner.data_plane {
            serve_ring_event(
                dp,
                &self.inner.control,
                &*mem,
                event,
                vrings,
                self.inner.num_queues,
            );
        }
    }

    fn serve_control(&self, mem: &GuestMemoryMmap, vrings: &[VringRwLock]) {
        let (Some(rx), Some(tx)) = (vrings.first(), vrings.get(1)) else {
            return;
        };
        if !ring_live(rx) || !ring_live(tx) {
            return;
        }
        let activity = {
            let mut txg = tx.get_mut();
            let mut rxg = rx.get_mut();
            lock(&self.inner.control).process(mem, txg.get_queue_mut(), rxg.get_queue_mut())
        };
        if activity.tx_used {
            signal(tx, "control tx 3");
        }
        if activity.rx_used {
            signal(rx, "control rx 2");
        }
    }
}

fn ring_live(v: &VringRwLock) -> bool {
    let g = v.get_ref();
    g.get_queue().ready() && g.is_enabled()
}

fn signal(v: &VringRwLock, name: &str) {
    match v.needs_notification() {
        Ok(false) => {}
        Ok(true) => {
            if let Err(e) = v.signal_used_queue() {
                tracing::warn!(queue = name, error = %e, "signal used queue");
            }
        }
        Err(e) => tracing::warn!(queue = name, error = %e, "needs_notification"),
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.inner.num_queues
    }

    fn max_queue_size(&self) -> usize {
        self.inner.max_queue_size
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn acked_features(&self, features: u64) {
        let net = NegotiatedNet::from_acked(features);
        tracing::info!(
            features = format_args!("{features:#x}"),
            ?net,
            "features acked"
        );
        lock(&self.inner.nic).set_negotiated(net);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        offered_protocol_features()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::Relaxed);
    }

    /// virtio_net_config: mac, status, max_virtqueue_pairs (only served to frontends that
    /// ask; QEMU uses its own config space since CONFIG is not offered).
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut cfg = Vec::with_capacity(12);
        cfg.extend_from_slice(&self.inner.mac);
        cfg.extend_from_slice(&1u16.to_le_bytes()); // VIRTIO_NET_S_LINK_UP
        cfg.extend_from_slice(&((self.inner.num_queues / 2) as u16).to_le_bytes());
        cfg.extend_from_slice(&1500u16.to_le_bytes());
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        let mut out = cfg[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *lock(&self.inner.mem) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        let all = if self.inner.num_queues >= 64 {
            u64::MAX
        } else {
            (1u64 << self.inner.num_queues) - 1
        };
        if self.inner.num_queues > 2 {
            vec![0b11, all & !0b11]
        } else {
            vec![0b11]
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        // Never return an error for guest misbehaviour: an error stops the worker thread.
        // That is exactly what the stop event is for (the connection has ended).
        if u64::from(device_event) == self.stop_token() {
            return Err(io::Error::other("connection ended: worker stops"));
        }
        match thread_id {
            NIC_THREAD => self.handle_nic(device_event, vrings),
            RING_THREAD => self.handle_rings(device_event, vrings),
            _ => {}
        }
        Ok(())
    }
}
