//! The host side of a QEMU run (issue 7): a private network namespace with a TAP whose
//! kernel side is the Linux peer, `chimney-device` on that TAP, the peer service
//! ([`peer`]) in the namespace, and QEMU (TCG, shared memfd RAM, `-netdev
//! vhost-user,queues=3`, `virtio-net-pci,mq=on,romfile=`) booting the guest image with the
//! guest agent (`crate::guest`) and the scenario files. It reads the agent's report from the
//! serial console and tears everything down on every exit path (`Drop`; Ctrl-C through
//! `crate::scenario::cleanup`).
//!
//! Topology (docs/qemu.md):
//! ```text
//!  guest agent ── virtio-net-pci (uio) ── QEMU ══ vhost-user socket ══ chimney-device ── tap0 ── Linux peer
//!                                                                          (namespace chqemu-<pid>-<n>)
//! ```

pub mod peer;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chimney_wire::{NetNs, Topology, TopologyConfig};

use crate::guest::report::{parse_summary, GuestSummary};
use crate::scenario::cleanup;

/// Queue pairs the device serves and QEMU asks for (NIC, control, data).
pub const QUEUE_PAIRS: u16 = crate::guest::PAIRS;
/// The guest NIC's MAC: the device's own (the userspace driver filters nothing; kept equal
/// so captures read naturally).
const GUEST_MAC: &str = "52:54:00:c4:1a:01";
const TAP: &str = "tap0";

/// How to run.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// The guest agent executable (a `chimney-harness` built for this machine).
    pub agent: PathBuf,
    /// The device executable (`None`: `device_process::device_binary`).
    pub device: Option<PathBuf>,
    /// Scenario files or directories; all go into the image, each file as
    /// `/scenarios/<its directory's name>/<file name>`.
    pub scenarios: Vec<PathBuf>,
    /// What the agent runs, as paths inside the guest (default `/scenarios`: everything).
    /// One image serves several suites (`/scenarios/smoke`, `/scenarios/faults`).
    pub guest_paths: Vec<String>,
    /// Only scenarios whose name matches this glob run.
    pub filter: Option<String>,
    pub seed: u64,
    /// Where console, QEMU, device and peer logs and the pcap go (created).
    pub log_dir: PathBuf,
    /// Bound for the whole run after the image is ready.
    pub timeout: Duration,
    /// Fault injection: SIGKILL the device once the peer has read this many bytes.
    pub kill_device_after_peer_bytes: Option<u64>,
    pub ram_mib: u32,
    /// The repository (for `images/build-image`).
    pub repo: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
}

impl QemuOptions {
    pub fn new(agent: PathBuf, scenarios: Vec<PathBuf>, log_dir: PathBuf) -> Self {
        QemuOptions {
            agent,
            device: None,
            scenarios,
            guest_paths: vec!["/scenarios".into()],
            filter: None,
            seed: 0,
            log_dir,
            timeout: Duration::from_secs(600),
            kill_device_after_peer_bytes: None,
            ram_mib: 512,
            repo: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            qemu: PathBuf::from("qemu-system-x86_64"),
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct QemuReport {
    /// The guest agent's summary, when it printed one.
    pub summary: Option<GuestSummary>,
    /// Host-side failures: the device died, the run timed out, no or broken summary, …
    pub errors: Vec<String>,
    pub log_dir: PathBuf,
    pub console: PathBuf,
    pub pcap: PathBuf,
    /// The namespace this run used (deleted when `run` returns).
    pub netns: String,
    /// Image build (or cache hit).
    pub image_time: Duration,
    /// QEMU start → the summary line on the console.
    pub boot_to_result: Option<Duration>,
    /// QEMU start → QEMU exited.
    pub qemu_runtime: Duration,
    pub qemu_exit: Option<String>,
    pub device_exit: Option<String>,
    /// The device was killed on purpose (fault injection), at this moment after QEMU start.
    pub device_killed_at: Option<Duration>,
    /// What QEMU printed (qemu.log): e.g. vhost-user errors after the device died.
    pub qemu_messages: Vec<String>,
}

impl QemuReport {
    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.summary.as_ref().is_some_and(GuestSummary::passed)
    }

    /// Human-readable account, with where the logs are.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Some(s) = &self.summary {
            out.push_str(&s.tap());
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        for m in self.qemu_messages.iter().take(10) {
            out.push_str(&format!("qemu: {m}\n"));
        }
        out.push_str(&format!(
            "image {:.1} s, boot-to-result {}, QEMU ran {:.1} s (exit: {}), device exit: {}\n",
            self.image_time.as_secs_f64(),
            self.boot_to_result
                .map_or("none".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
            self.qemu_runtime.as_secs_f64(),
            self.qemu_exit.as_deref().unwrap_or("killed by the harness"),
            self.device_exit
                .as_deref()
                .unwrap_or("stopped by the harness"),
        ));
        out.push_str(&format!(
            "logs: {} (console.log, qemu.log, device.log, peer.log, device.pcap, image.log)\n",
            self.log_dir.display()
        ));
        out.push_str(if self.passed() {
            "PASSED\n"
        } else {
            "FAILED\n"
        });
        out
    }
}

/// A child process stopped on drop (SIGTERM, then SIGKILL), on every exit path.
struct Proc {
    what: &'static str,
    child: Child,
    _tracked: cleanup::Tracked,
}

impl Proc {
    fn spawn(what: &'static str, cmd: &mut Command) -> Result<Proc, String> {
        let child = cmd.spawn().map_err(|e| format!("start {what}: {e}"))?;
        let tracked = cleanup::track(None, Some(child.id()), None);
        Ok(Proc {
            what,
            child,
            _tracked: tracked,
        })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal(&self, sig: i32) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, not yet reaped (we hold its Child).
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status.
    fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        self.signal(libc::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(what = self.what, "killing after {grace:?}");
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

fn log_file(path: &Path) -> Result<File, String> {
    File::create(path).map_err(|e| format!("create {}: {e}", path.display()))
}

/// Scenario files named by `paths` (directories: their `*.toml`, sorted).
fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    crate::scenario::format::discover(paths).map_err(|e| e.to_string())
}

/// Build (or find in the cache) the guest image with the agent and the scenario files.
pub fn build_image(opts: &QemuOptions, files: &[PathBuf]) -> Result<PathBuf, String> {
    let script = opts.repo.join("images/build-image");
    let log = opts.log_dir.join("image.log");
    let mut cmd = Command::new(&script);
    cmd.arg("--extra")
        .arg(format!("{}:/bin/chimney-agent", opts.agent.display()));
    for f in files {
        let name = f
            .file_name()
            .ok_or_else(|| format!("{} has no file name", f.display()))?;
        let dir = f
            .parent()
            .and_then(Path::file_name)
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|| "top".into());
        cmd.arg("--extra").arg(format!(
            "{}:/scenarios/{dir}/{}",
            f.display(),
            name.to_string_lossy()
        ));
    }
    let out = cmd
        .stderr(log_file(&log)?)
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "images/build-image failed ({}); see {}",
            out.status,
            log.display()
        ));
    }
    let dir = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );
    if !dir.join("vmlinuz").is_file() || !dir.join("initramfs.cpio.gz").is_file() {
        return Err(format!(
            "images/build-image printed {}, which holds no vmlinuz + initramfs.cpio.gz",
            dir.display()
        ));
    }
    Ok(dir)
}

/// Start the device inside `ns` on the TAP, logging to `device.log`, and wait for its
/// socket (the backend listens first, QEMU connects: DESIGN.md).
fn start_device(opts: &QemuOptions, ns: &NetNs, socket: &Path) -> Result<Proc, String> {
    let bin = match &opts.device {
        Some(b) => b.clone(),
        None => crate::device_process::device_binary().map_err(|e| e.to_string())?,
    };
    let log = opts.log_dir.join("device.log");
    let mut cmd = ns.command(&bin.to_string_lossy());
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--tap")
        .arg(TAP)
        .arg("--queue-pairs")
        .arg(QUEUE_PAIRS.to_string())
        .arg("--pcap")
        .arg(opts.log_dir.join("device.pcap"))
        .arg("--log-level")
        .arg(std::env::var("CHIMNEY_DEVICE_LOG").unwrap_or_else(|_| "info".into()))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log_file(&log)?)
        .stderr(
            fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .map_err(|e| format!("open {}: {e}", log.display()))?,
        );
    let mut dev = Proc::spawn("chimney-device", &mut cmd)?;
    let until = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        if let Some(s) = dev.exited() {
            return Err(format!(
                "chimney-device exited ({s}) before listening; see {}",
                log.display()
            ));
        }
        if Instant::now() > until {
            return Err("chimney-device did not create its socket within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(dev)
}

/// The QEMU command line (also written to `qemu.cmdline`).
fn qemu_command(opts: &QemuOptions, image: &Path, socket: &Path, console: &Path) -> Command {
    let mut args = format!(
        "guest-agent,{},--seed,{}",
        opts.guest_paths.join(","),
        opts.seed
    );
    if let Some(f) = &opts.filter {
        args.push_str(&format!(",--filter,{f}"));
    }
    let append = format!(
        "console=ttyS0 panic=-1 loglevel=3 chimney.mode=exec chimney.exec=/bin/chimney-agent \
         chimney.args={args}"
    );
    let ram = opts.ram_mib;
    let mut c = Command::new(&opts.qemu);
    c.arg("-chardev")
        .arg(format!("socket,id=chr0,path={}", socket.display()))
        .args([
            "-netdev",
            &format!("vhost-user,id=net0,chardev=chr0,queues={QUEUE_PAIRS}"),
        ])
        .args(["-accel", "tcg", "-machine", "pc,memory-backend=mem"])
        .args(["-smp", "1", "-m", &format!("{ram}M")])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={ram}M,share=on"),
        ])
        .args(["-nographic", "-no-reboot", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args([
            "-device",
            &format!("virtio-net-pci,netdev=net0,mq=on,romfile=,mac={GUEST_MAC}"),
        ])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initramfs.cpio.gz"))
        .args(["-append", &append])
        .stdin(Stdio::null());
    // Debugging: CHIMNEY_QEMU_TRACE=vhost_user*,virtio_net* adds QEMU trace events to qemu.log.
    if let Ok(t) = std::env::var("CHIMNEY_QEMU_TRACE") {
        for ev in t.split(',').filter(|e| !e.is_empty()) {
            c.args(["-trace", &format!("enable={ev}")]);
        }
    }
    c
}

/// One QEMU run. `Err` only when the run could not be set up (no image, no namespace, no
/// device, no QEMU); everything that went wrong afterwards is in the report's `errors`.
pub fn run(opts: &QemuOptions) -> Result<QemuReport, String> {
    fs::create_dir_all(&opts.log_dir)
        .map_err(|e| format!("create {}: {e}", opts.log_dir.display()))?;
    let files = scenario_files(&opts.scenarios)?;
    let t_image = Instant::now();
    let image = build_image(opts, &files)?;
    let image_time = t_image.elapsed();

    let ns = Topology::with_persistent_tap(&TopologyConfig {
        ns_prefix: "chqemu".into(),
        tap_name: TAP.into(),
        ..TopologyConfig::default()
    })
    .map_err(|e| format!("namespace + TAP: {e}"))?;
    let _ns_tracked = cleanup::track(Some(ns.name().to_string()), None, None);
    let netns = ns.name().to_string();
    let socket = opts.log_dir.join("vhost-user.sock");
    let _ = fs::remove_file(&socket);
    let peer = peer::PeerService::start(&ns)?;
    let mut device = start_device(opts, &ns, &socket)?;

    let console = opts.log_dir.join("console.log");
    let _ = fs::remove_file(&console);
    let mut cmd = qemu_command(opts, &image, &socket, &console);
    let qemu_log = opts.log_dir.join("qemu.log");
    cmd.stdout(log_file(&qemu_log)?)
        .stderr(log_file(&qemu_log)?);
    let _ = fs::write(opts.log_dir.join("qemu.cmdline"), format!("{cmd:?}\n"));
    let t0 = Instant::now();
    let mut qemu = Proc::spawn("qemu-system-x86_64", &mut cmd)?;

    let mut report = QemuReport {
        summary: None,
        errors: Vec::new(),
        log_dir: opts.log_dir.clone(),
        console: console.clone(),
        pcap: opts.log_dir.join("device.pcap"),
        netns,
        image_time,
        boot_to_result: None,
        qemu_runtime: Duration::ZERO,
        qemu_exit: None,
        device_exit: None,
        device_killed_at: None,
        qemu_messages: Vec::new(),
    };
    let mut summary_text: Option<Result<GuestSummary, String>> = None;
    let mut device_dead_reported = false;
    loop {
        let text = fs::read(&console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if summary_text.is_none() {
            // A broken summary is judged once QEMU is done (below), not latched here.
            if let Some(Ok(s)) = parse_summary(&text) {
                report.boot_to_result = Some(t0.elapsed());
                summary_text = Some(Ok(s));
            }
        }
        if let (Some(n), None) = (opts.kill_device_after_peer_bytes, report.device_killed_at) {
            if peer.bytes_read.load(std::sync::atomic::Ordering::Relaxed) >= n {
                device.signal(libc::SIGKILL);
                report.device_killed_at = Some(t0.elapsed());
                tracing::warn!("fault injection: device killed after the peer read {n} bytes");
            }
        }
        if !device_dead_reported {
            if let Some(s) = device.exited() {
                device_dead_reported = true;
                report.device_exit = Some(s.to_string());
                if report.device_killed_at.is_none() {
                    report.errors.push(format!(
                        "chimney-device exited during the run ({s}); see device.log"
                    ));
                }
            }
        }
        if let Some(s) = qemu.exited() {
            report.qemu_exit = Some(s.to_string());
            break;
        }
        if summary_text.is_some()
            && report
                .boot_to_result
                .is_some_and(|b| t0.elapsed() > b + Duration::from_secs(20))
        {
            report
                .errors
                .push("QEMU did not power off within 20 s of the guest's summary".into());
            break;
        }
        if t0.elapsed() > opts.timeout {
            report.errors.push(format!(
                "timed out after {:?} (the guest printed {}summary); see console.log",
                opts.timeout,
                if summary_text.is_some() { "a " } else { "no " }
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    report.qemu_runtime = t0.elapsed();
    // Teardown in order: QEMU, then the device (SIGTERM flushes its pcap), then the peer,
    // then the namespace (when `ns` drops at the end of this function).
    let q = qemu.stop(Duration::from_secs(3));
    if report.qemu_exit.is_none() {
        report.qemu_exit = None;
        tracing::info!(?q, "QEMU stopped by the harness");
    }
    let d = device.stop(Duration::from_secs(3));
    if report.device_exit.is_none() && report.device_killed_at.is_some() {
        report.device_exit = d.map(|s| s.to_string());
    }
    drop(device);
    let log = peer.log.lock().map(|l| l.join("\n")).unwrap_or_default();
    let _ = fs::write(opts.log_dir.join("peer.log"), log + "\n");
    drop(peer);
    let _ = fs::remove_file(&socket);
    if summary_text.is_none() {
        let text = fs::read(&console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        summary_text = parse_summary(&text);
    }
    match summary_text {
        Some(Ok(s)) => report.summary = Some(s),
        Some(Err(e)) => report.errors.push(e),
        None => report.errors.push(format!(
            "the guest printed no summary; last console lines:\n{}",
            tail(&console, 15)
        )),
    }
    report.qemu_messages = fs::read_to_string(&qemu_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    drop(ns);
    Ok(report)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// QEMU's major version, or why it cannot run ("run scripts/install-qemu").
pub fn qemu_major(qemu: &Path) -> Result<u32, String> {
    let out = Command::new(qemu)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e} (run scripts/install-qemu)", qemu.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("version ")
        .nth(1)
        .and_then(|r| r.split('.').next())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("cannot read QEMU's version from {text:?}"))
}
