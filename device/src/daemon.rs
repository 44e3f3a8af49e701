//! The device's life cycle: listen on the frontend socket, and for each connection run a fresh
//! vhost-user daemon (published crates) behind the relay (`relay.rs`), so QEMU can restart and
//! reconnect. The TAP and the counters outlive connections; guest state (memory, rings, the
//! offloaded-object table) belongs to one connection.

use crate::backend::{NetBackend, NIC_THREAD};
use crate::control_ring::ControlRing;
use crate::data_plane::DataPlane;
use crate::nic::{Nic, NicStats};
use crate::relay::Relay;
use crate::state_manipulation::ObjectLimits;
use crate::DeviceError;
use chimney_wire::{PcapWriter, Tap};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// Device settings.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Queue pairs: 0 NIC, 1 control, 2.. data (DESIGN.md queue map). At least 1.
    pub queue_pairs: u16,
    /// Largest vring the driver may set up.
    pub max_queue_size: u16,
    /// MAC in our config space (QEMU serves its own).
    pub mac: [u8; 6],
    /// Per-guest object limits (OFFLOAD_*_ENTRIES when exceeded).
    pub limits: ObjectLimits,
    /// Data plane options (impairment of offloaded traffic, …).
    pub data_plane: crate::data_plane::DataPlaneOptions,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            queue_pairs: 2,
            max_queue_size: 1024,
            mac: [0x52, 0x54, 0x00, 0xc4, 0x1a, 0x01],
            limits: ObjectLimits::default(),
            data_plane: Default::default(),
        }
    }
}

/// The device: configuration plus what outlives a frontend connection.
pub struct Device {
    cfg: DeviceConfig,
    tap: Option<Arc<Tap>>,
    pcap: Option<Arc<PcapWriter>>,
    stats: Arc<NicStats>,
    stop: Arc<AtomicBool>,
    /// The frontend stream of the connection being served (to end it on stop).
    current: Arc<Mutex<Option<UnixStream>>>,
}

static INNER_SOCKET_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Device {
    pub fn new(
        cfg: DeviceConfig,
        tap: Option<Tap>,
        pcap: Option<PcapWriter>,
    ) -> Result<Device, DeviceError> {
        if cfg.queue_pairs == 0 {
            return Err(DeviceError::Config {
                field: "queue_pairs",
                reason: "must be at least 1".into(),
            });
        }
        if !cfg.max_queue_size.is_power_of_two() {
            return Err(DeviceError::Config {
                field: "max_queue_size",
                reason: format!("{} is not a power of two", cfg.max_queue_size),
            });
        }
        Ok(Device {
            cfg,
            tap: tap.map(Arc::new),
            pcap: pcap.map(Arc::new),
            stats: Arc::new(NicStats::default()),
            stop: Arc::new(AtomicBool::new(false)),
            current: Arc::new(Mutex::new(None)),
        })
    }

    /// The pcap writer, if any (e.g. to flush it periodically).
    pub fn pcap(&self) -> Option<Arc<PcapWriter>> {
        self.pcap.clone()
    }

    /// Pair 0 counters (cumulative over connections).
    pub fn stats(&self) -> Arc<NicStats> {
        self.stats.clone()
    }

    /// Bind the frontend socket (a stale socket file is removed first).
    pub fn listen(path: &Path) -> Result<UnixListener, DeviceError> {
        let _ = std::fs::remove_file(path);
        UnixListener::bind(path).map_err(|e| DeviceError::io(format!("bind {}", path.display()), e))
    }

    /// Serve frontends one after another until `stop` is requested (a frontend that
    /// disconnects, e.g. QEMU restarting, is followed by the next one).
    pub fn serve(&self, listener: &UnixListener) -> Result<(), DeviceError> {
        while !self.stop.load(Ordering::Acquire) {
            let (stream, _) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DeviceError::io("accept frontend", e)),
            };
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            tracing::info!("frontend connected");
            match self.serve_connection(stream) {
                Ok(()) => tracing::info!("frontend disconnected"),
                Err(e) => tracing::warn!(error = %e, "connection ended with an error"),
            }
        }
        Ok(())
    }

    /// Serve one frontend connection until it ends.
    pub fn serve_connection(&self, frontend: UnixStream) -> Result<(), DeviceError> {
        let mut nic = Nic::new(self.tap.clone(), self.pcap.clone(), self.stats.clone());
        // Queue pairs beyond the control pair are data pairs (DESIGN.md queue map); with any,
        // the device runs a data plane: offloaded connections' engines, the logical switch.
        let control = if self.cfg.queue_pairs >= 3 {
            let dp = DataPlane::new(
                self.cfg.mac,
                self.cfg.queue_pairs - 2,
                self.tap.clone(),
                self.pcap.clone(),
                &self.cfg.data_plane,
            )
            .map_err(|e| DeviceError::io("create data plane", e))?;
            let dp = Arc::new(dp);
            nic.set_switch(Some(dp.clone()));
            ControlRing::with_data_plane(self.cfg.limits, dp)
        } else {
            ControlRing::new(self.cfg.limits)
        };
        let backend = NetBackend::new(
            self.cfg.queue_pairs,
            self.cfg.max_queue_size,
            self.cfg.mac,
            nic,
            control,
        )
        .map_err(|e| DeviceError::io("create stop eventfd", e))?;
        let tap_token = backend.tap_token();
        let num_queues = u32::from(self.cfg.queue_pairs) * 2;
        let mut daemon = VhostUserDaemon::new(
            "chimney-device".into(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| DeviceError::Daemon(e.to_string()))?;
        // Declared after `daemon`, so dropped before it on every return path: the daemon's
        // drop joins its worker threads, which return only on the stop event.
        let _stop_workers = StopWorkers(backend.clone());
        let handlers = daemon.get_epoll_handlers();
        backend
            .register_stop(&handlers)
            .map_err(|e| DeviceError::io("register stop eventfd", e))?;
        backend
            .register_data_plane(&handlers)
            .map_err(|e| DeviceError::io("register data plane fds", e))?;
        if let (Some(tap), Some(h)) = (&self.tap, handlers.get(NIC_THREAD)) {
            // Edge-triggered: when the guest has no rx buffers we stop reading and resume
            // on its rx kick, instead of spinning on a readable fd.
            h.register_listener(
                tap.as_raw_fd(),
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                tap_token,
            )
            .map_err(|e| DeviceError::io("register TAP in epoll", e))?;
        }

        // The daemon's end of the relay: a private listener in the abstract namespace.
        let name = format!(
            "chimney-device-{}-{}",
            std::process::id(),
            INNER_SOCKET_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| DeviceError::io("abstract socket address", e))?;
        let inner =
            UnixListener::bind_addr(&addr).map_err(|e| DeviceError::io("bind daemon socket", e))?;
        let daemon_side = UnixStream::connect_addr(&addr)
            .map_err(|e| DeviceError::io("connect daemon socket", e))?;
        let mut listener = vhost::vhost_user::Listener::from(inner);
        daemon
            .start(&mut listener)
            .map_err(|e| DeviceError::Daemon(e.to_string()))?;
        drop(listener);

        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = frontend.try_clone().ok();
        let relay = Relay::spawn(frontend, daemon_side, num_queues)
            .map_err(|e| DeviceError::io("start relay", e))?;
        let result = daemon.wait();
        relay.shutdown();
        relay.join();
        if let Some(p) = &self.pcap {
            if let Err(e) = p.flush() {
                tracing::warn!(error = %e, "flush pcap");
            }
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        drop(handlers);
        match result {
            Ok(()) => Ok(()),
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected
                | vhost::vhost_user::Error::PartialMessage
                | vhost::vhost_user::Error::SocketBroken(_),
            )) => Ok(()),
            Err(e) => Err(DeviceError::Daemon(e.to_string())),
        }
    }

    /// Run the device on `socket_path` in a background thread (for tests and embedding).
    pub fn spawn(self, socket_path: &Path) -> Result<RunningDevice, DeviceError> {
        let listener = Device::listen(socket_path)?;
        let stats = self.stats.clone();
        let stop = self.stop.clone();
        let current = self.current.clone();
        let thread = std::thread::Builder::new()
            .name("chimney-device".into())
            .spawn(move || {
                if let Err(e) = self.serve(&listener) {
                    tracing::error!(error = %e, "device stopped");
                }
            })
            .map_err(|e| DeviceError::io("spawn device thread", e))?;
        Ok(RunningDevice {
            path: socket_path.to_path_buf(),
            stats,
            stop,
            current,
            thread: Some(thread),
        })
    }
}

/// Stops the connection's worker threads when dropped.
struct StopWorkers(NetBackend);

impl Drop for StopWorkers {
    fn drop(&mut self) {
        self.0.request_stop();
    }
}

/// A device serving in a background thread; stopped on drop.
pub struct RunningDevice {
    path: PathBuf,
    stats: Arc<NicStats>,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningDevice {
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> Arc<NicStats> {
        self.stats.clone()
    }

    /// Stop serving: end the current connection and the accept loop, and wait.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(s) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // Wake the accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for RunningDevice {
    fn drop(&mut self) {
        self.stop();
    }
}
