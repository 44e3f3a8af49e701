//! Start the `chimney-device` binary for tests and for `chimney-harness smoke`.
//!
//! Why a separate process and not the backend in a thread: the device owns the TAP inside
//! the test namespace and is exactly what QEMU talks to, so the harness exercises the real
//! binary (CLI, socket setup, relay) the same way; a crash or hang in the device can't take
//! the harness down with it, and `Drop` kills it.
//!
//! Finding the binary (cargo has no CARGO_BIN_EXE for other crates' binaries):
//! 1. `$CHIMNEY_DEVICE_BIN` if set;
//! 2. under cargo (`$CARGO` is set for `cargo test` / `cargo run`): `cargo build -p
//!    chimney-device --bin chimney-device --message-format=json` (profile `test` for test
//!    binaries, else `dev`), reading the executable path from cargo's own output, so the
//!    target dir is whatever cargo uses and the binary is never stale;
//! 3. next to the running executable (or its parent, for test binaries in `deps/`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chimney_wire::NetNs;

use crate::error::{HarnessError, Result};

/// Locate (building if needed) the `chimney-device` executable. Cached per process.
pub fn device_binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(find_device_binary)
        .clone()
        .map_err(HarnessError::Device)
}

fn find_device_binary() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CHIMNEY_DEVICE_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("CHIMNEY_DEVICE_BIN={} is not a file", p.display()))
        };
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        return build_with_cargo(Path::new(&cargo));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join("chimney-device");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    Err(format!(
        "chimney-device not found next to {} and not running under cargo; build it \
         (cargo build -p chimney-device) or set CHIMNEY_DEVICE_BIN",
        exe.display()
    ))
}

fn build_with_cargo(cargo: &Path) -> std::result::Result<PathBuf, String> {
    // A test binary lives in `<target>/<profile>/deps/`: build with the `test` profile then,
    // so `cargo test --workspace`'s own build of the device is reused instead of a second
    // compile with other settings.
    let in_deps = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.ends_with("deps")))
        .unwrap_or(false);
    let profile = if in_deps { "test" } else { "dev" };
    let out = Command::new(cargo)
        .args([
            "build",
            "--profile",
            profile,
            "-p",
            "chimney-device",
            "--bin",
            "chimney-device",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {} build: {e}", cargo.display()))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build -p chimney-device failed: {}",
            out.status
        ));
    }
    // Each line is a JSON message; the artifact line of the binary carries "executable".
    let key = "\"executable\":\"";
    for line in out.stdout.lines() {
        let line = line.map_err(|e| format!("cargo output: {e}"))?;
        if !line.contains("\"name\":\"chimney-device\"") {
            continue;
        }
        if let Some(start) = line.find(key) {
            let rest = &line[start + key.len()..];
            if let Some(end) = rest.find('"') {
                return Ok(PathBuf::from(&rest[..end]));
            }
        }
    }
    Err("cargo build did not report a chimney-device executable".to_string())
}

/// How to start the device.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// The executable; `None` = [`device_binary`].
    pub binary: Option<PathBuf>,
    pub queue_pairs: u16,
    /// TAP name inside the namespace (the device opens it).
    pub tap: String,
    /// Extra command-line arguments (e.g. `--max-tcp 10`). The log level comes from
    /// `$CHIMNEY_DEVICE_LOG` (default `warn`).
    pub extra_args: Vec<String>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            binary: None,
            queue_pairs: 2,
            tap: "tap0".to_string(),
            extra_args: Vec::new(),
        }
    }
}

/// A running `chimney-device`; killed and its socket removed on drop.
#[derive(Debug)]
pub struct DeviceProcess {
    child: Child,
    socket: PathBuf,
}

static SOCKET_COUNTER: AtomicU32 = AtomicU32::new(0);

impl DeviceProcess {
    /// Start the device inside `ns` (`ip netns exec`), listening on a fresh socket path, and
    /// wait until the socket exists. The socket is a file, so it is reachable from any
    /// namespace.
    pub fn start_in(ns: &NetNs, opts: &DeviceOptions) -> Result<DeviceProcess> {
        let bin = match &opts.binary {
            Some(b) if b.is_file() => b.clone(),
            Some(b) => {
                return Err(HarnessError::Device(format!(
                    "device binary {} is not a file",
                    b.display()
                )))
            }
            None => device_binary()?,
        };
        let socket = std::env::temp_dir().join(format!(
            "chimney-device-{}-{}.sock",
            std::process::id(),
            SOCKET_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&socket);
        let bin_str = bin
            .to_str()
            .ok_or_else(|| HarnessError::Device(format!("non-UTF-8 path {}", bin.display())))?;
        let mut cmd = ns.command(bin_str);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--tap")
            .arg(&opts.tap)
            .arg("--queue-pairs")
            .arg(opts.queue_pairs.to_string())
            .arg("--log-level")
            .arg(std::env::var("CHIMNEY_DEVICE_LOG").unwrap_or_else(|_| "warn".to_string()))
            .args(&opts.extra_args)
            .stdin(Stdio::null());
        tracing::info!(?cmd, "starting device");
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawn {}", bin.display()), e))?;
        let mut dev = DeviceProcess { child, socket };
        dev.wait_for_socket()?;
        Ok(dev)
    }

    /// Process id (for the Ctrl-C cleanup registry).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Is the device process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the listening socket. We must not connect to probe it: the backend serves
    /// exactly one frontend connection. Bounded so a broken device fails the test instead
    /// of hanging it.
    fn wait_for_socket(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.socket.exists() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(HarnessError::Device(format!(
                    "exited with {status} before creating {}",
                    self.socket.display()
                )));
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(HarnessError::Timeout(format!(
                    "device socket {}",
                    self.socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        // SIGTERM first: the device flushes its pcap and removes its socket on it; SIGKILL
        // if it has not exited within two seconds.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    let _ = std::fs::remove_file(&self.socket);
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
