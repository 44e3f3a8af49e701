//! One benchmark machine: the harness's TestBed (private namespace with the kernel peer on a
//! TAP, the real `chimney-device` process, the in-process VMM), the host stack on queue
//! pair 0, the control session on pair 1 and the miniport's DataChannel on pair 2. The
//! setup is the one of harness/tests/datapath_transfer.rs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chimney_abi::data_io::{DataRecord, DataRequest};
use chimney_harness::control_session::ControlSession;
use chimney_harness::device_process::DeviceOptions;
use chimney_harness::host_stack::HostStack;
use chimney_harness::{TestBed, TestBedConfig, VmmConfig, VmmPlatform};
use chimney_miniport::data::{DataChannel, DataConfig, DataError};
use chimney_miniport::{ControlConfig, NicQueues};
use chimney_netstack::{ConnHandle, EngineConfig, TcpConnectionState};
use chimney_wire::{GUEST_IPV4, GUEST_IPV6};

use crate::error::{BenchError, Result};

/// How to build a [`Rig`].
#[derive(Debug, Clone)]
pub struct RigOptions {
    pub device_bin: PathBuf,
    /// Extra device arguments (`--max-tcp` …).
    pub device_args: Vec<String>,
    pub ram_bytes: usize,
    pub data: DataConfig,
    /// Virtqueue size of the data pair.
    pub data_queue_size: u16,
    /// Host-stack socket buffers (bytes).
    pub host_buffers: usize,
    /// Largest control request (bulk trees need the device's 4 MiB).
    pub max_request_len: usize,
}

impl RigOptions {
    pub fn new(device_bin: PathBuf) -> RigOptions {
        RigOptions {
            device_bin,
            device_args: Vec::new(),
            ram_bytes: 256 << 20,
            data: DataConfig::default(),
            data_queue_size: 256,
            host_buffers: 4 << 20,
            max_request_len: 4 << 20,
        }
    }
}

pub struct Rig {
    pub stack: HostStack,
    pub session: ControlSession,
    pub data: DataChannel,
    pub platform: Arc<VmmPlatform>,
    /// Dropped last: VMM, device process, namespace.
    pub bed: TestBed,
}

impl Rig {
    pub fn start(opts: &RigOptions) -> Result<Rig> {
        let cfg = TestBedConfig {
            device: DeviceOptions {
                binary: Some(opts.device_bin.clone()),
                queue_pairs: 3,
                extra_args: opts.device_args.clone(),
                ..DeviceOptions::default()
            },
            vmm: VmmConfig {
                ram_bytes: opts.ram_bytes,
                queue_pairs: 3,
                event_idx: true,
            },
            ..TestBedConfig::default()
        };
        let mut bed = TestBed::start(&cfg)?;
        let platform = bed.vmm.platform().clone();
        let rx = bed.vmm.create_queue(0, 256)?;
        let tx = bed.vmm.create_queue(1, 256)?;
        let nic = NicQueues::new(&*platform, rx, tx, 2048)
            .map_err(|e| BenchError::Device(format!("pair 0: {e}")))?;
        // The host stack is the NIC's own interface: the device's MAC (C-047).
        let mac = chimney_device::DeviceConfig::default().mac;
        let mut ecfg = EngineConfig::new(mac, Some(GUEST_IPV4), Some(GUEST_IPV6));
        ecfg.tcp.send_buffer = opts.host_buffers;
        ecfg.tcp.recv_buffer = opts.host_buffers;
        let stack = HostStack::new(platform.clone(), nic, ecfg)?;
        let ccfg = ControlConfig {
            max_request_len: opts.max_request_len,
            max_record_len: 8 << 20,
            ..ControlConfig::default()
        };
        let mut session = ControlSession::open(&mut bed.vmm, 256, ccfg)?;
        session.negotiate()?;
        session.set_parameters(Default::default())?;
        let drx = bed.vmm.create_queue(4, opts.data_queue_size)?;
        let dtx = bed.vmm.create_queue(5, opts.data_queue_size)?;
        let data = DataChannel::new(&*platform, drx, dtx, opts.data)?;
        Ok(Rig {
            stack,
            session,
            data,
            platform,
            bed,
        })
    }

    pub fn device_pid(&self) -> u32 {
        self.bed.device.pid()
    }

    /// Active open from the host stack to `peer`, waiting until established.
    pub fn connect(&mut self, peer: SocketAddr) -> Result<ConnHandle> {
        let now = self.stack.now();
        let c = self
            .stack
            .engine
            .connect(now, peer, None)
            .map_err(|e| BenchError::Engine(format!("connect: {e}")))?;
        self.wait_established(&[c], Duration::from_secs(20))?;
        Ok(c)
    }

    /// Poll the host stack until every connection is established.
    pub fn wait_established(&mut self, conns: &[ConnHandle], bound: Duration) -> Result<()> {
        let start = Instant::now();
        let mut i = 0;
        while i < conns.len() {
            if self.stack.engine.state(conns[i]).ok() == Some(TcpConnectionState::Established) {
                i += 1;
                continue;
            }
            self.stack.poll(Duration::from_millis(2))?;
            if start.elapsed() > bound {
                return Err(BenchError::Stalled {
                    what: "host-stack connect".into(),
                    detail: format!("{i} of {} established after {bound:?}", conns.len()),
                });
            }
        }
        Ok(())
    }

    /// Submit one data request; when every slot is in flight, poll (records queue up in the
    /// channel) and retry.
    pub fn submit(&mut self, req: &DataRequest) -> Result<()> {
        let start = Instant::now();
        loop {
            match self.data.submit(&*self.platform, req) {
                Ok(()) => return Ok(()),
                Err(DataError::NoFreeSlot(_)) => {
                    self.data.poll(&*self.platform)?;
                    if start.elapsed() > Duration::from_secs(30) {
                        return Err(BenchError::Stalled {
                            what: "data submit".into(),
                            detail: "no free tx slot for 30 s".into(),
                        });
                    }
                    std::thread::yield_now();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Collect the records that are there; if none, wait up to `wait` for the device.
    pub fn records(&mut self, wait: Duration, out: &mut Vec<DataRecord>) -> Result<()> {
        self.data.poll(&*self.platform)?;
        if !self.data.has_records() && !wait.is_zero() {
            self.data.wait(&*self.platform, wait)?;
            self.data.poll(&*self.platform)?;
        }
        while let Some(r) = self.data.next_record() {
            out.push(r);
        }
        Ok(())
    }

    /// Drain control events (disconnects etc.) so the control ring never fills.
    pub fn drain_events(&mut self) -> Result<Vec<chimney_abi::Event>> {
        let p = self.session.platform_arc();
        self.session
            .channel
            .poll(&*p)
            .map_err(|e| BenchError::Device(format!("control poll: {e}")))?;
        let mut v = Vec::new();
        while let Some(e) = self.session.channel.next_event() {
            v.push(e);
        }
        Ok(v)
    }

    /// Statistics counter of the TAP in the namespace (kernel side: `rx_packets` are the
    /// frames the device wrote).
    pub fn tap_stat(&self, name: &str) -> Result<u64> {
        let out = self
            .bed
            .ns
            .command("cat")
            .arg(format!("/sys/class/net/tap0/statistics/{name}"))
            .output()
            .map_err(|e| BenchError::io("read TAP statistics", e))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| BenchError::Parse(format!("TAP statistic {name}: {out:?}")))
    }
}

/// Find the device executable: `$CHIMNEY_DEVICE_BIN`; else next to this executable (a
/// `cargo build --release -p chimney-device -p chimney-bench` puts both in target/release);
/// a bench binary outside `release/` (tests, debug builds) uses the harness's finder; a
/// release one under cargo builds the device optimised into its own target directory. A
/// benchmark of an unoptimised device would measure the wrong thing.
pub fn device_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CHIMNEY_DEVICE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| BenchError::io("current_exe", e))?;
    let sibling = || {
        exe.ancestors()
            .skip(1)
            .take(2)
            .map(|d| d.join("chimney-device"))
            .find(|c| c.is_file())
    };
    if let Some(p) = sibling() {
        return Ok(p);
    }
    let in_release = exe.parent().is_some_and(|d| d.ends_with("release"));
    if !in_release {
        // Test binaries and debug builds: the harness's finder, like every harness test.
        return Ok(chimney_harness::device_process::device_binary()?);
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let target_dir = exe.parent().and_then(|d| d.parent());
        if let Some(target_dir) = target_dir {
            let st = std::process::Command::new(cargo)
                .args(["build", "--release", "-p", "chimney-device", "--target-dir"])
                .arg(target_dir)
                .status()
                .map_err(|e| BenchError::io("cargo build -p chimney-device", e))?;
            if st.success() {
                if let Some(p) = sibling() {
                    return Ok(p);
                }
            }
        }
    }
    Err(BenchError::Device(format!(
        "chimney-device not found next to {}: run `cargo build --release -p chimney-device` \
         or set CHIMNEY_DEVICE_BIN",
        exe.display()
    )))
}
