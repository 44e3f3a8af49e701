//! `chimney-device`: the vhost-user-net backend binary (CLI in the style of rust-vmm's
//! vhost-device crates).

use anyhow::Context;
use chimney_device::state_manipulation::ObjectLimits;
use chimney_device::{Device, DeviceConfig};
use chimney_wire::{NetNs, PcapWriter, Tap};
use clap::Parser;
use std::path::PathBuf;

/// Emulated TCP-chimney NIC as a vhost-user-net backend.
///
/// Queue pair 0 is a plain NIC bridged to a TAP device, pair 1 is the chimney control ring,
/// pairs 2.. are data rings. Serves one frontend at a time; when it disconnects (QEMU
/// restarts) the next connection is served.
#[derive(Debug, Parser)]
#[command(name = "chimney-device", version, about)]
struct Args {
    /// Unix socket the frontend (QEMU `-chardev socket,path=…`) connects to.
    #[arg(long)]
    socket_path: PathBuf,
    /// TAP interface for queue pair 0 (created, or attached if it exists persistently).
    /// Without it, frames the guest sends are counted and dropped.
    #[arg(long)]
    tap: Option<String>,
    /// Open the TAP inside this existing network namespace (`ip netns add NAME`). The rest
    /// of the device stays where it runs; the socket path is a file and crosses namespaces.
    #[arg(long, requires = "tap")]
    netns: Option<String>,
    /// Write every frame of queue pair 0 (both directions) to this pcap file.
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Queue pairs: 0 NIC, 1 control, 2.. data. 1 gives a plain NIC, 2 adds the control
    /// plane (state objects only), 3 or more add data rings for offloaded transfers.
    /// Must match QEMU's `queues=`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    queue_pairs: u16,
    /// Largest virtqueue size the driver may use (power of two).
    #[arg(long, default_value_t = 1024)]
    max_queue_size: u16,
    /// Most offloaded neighbor objects per guest.
    #[arg(long, default_value_t = ObjectLimits::default().neighbors)]
    max_neighbors: u32,
    /// Most offloaded path objects per guest.
    #[arg(long, default_value_t = ObjectLimits::default().paths)]
    max_paths: u32,
    /// Most offloaded TCP connections per guest.
    #[arg(long, default_value_t = ObjectLimits::default().tcp)]
    max_tcp: u32,
    /// Impair offloaded traffic (both directions), seeded:
    /// `loss=0.05,reorder=0.05,reorder-delay-ms=3,duplicate=0,corrupt=0,delay-ms=0,seed=N`.
    #[arg(long, value_name = "SPEC")]
    impair: Option<String>,
    /// Vendor policy file (TOML, docs/vendor-guide.md): capacities, failures, events,
    /// engine tuning, deliberate firmware bugs.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any thread exists, so every thread inherits the mask and the signal thread below
    // is the only one that takes SIGINT/SIGTERM (to flush the pcap and remove the socket).
    chimney_device::sys::block_termination_signals().context("block SIGINT/SIGTERM")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .with_context(|| format!("--log-level {:?}", args.log_level))?,
        )
        .with_writer(std::io::stderr)
        .init();

    let tap = match (&args.tap, &args.netns) {
        (Some(name), Some(ns)) => {
            let ns = NetNs::open(ns).with_context(|| format!("--netns {ns}"))?;
            Some(Tap::open_in(&ns, name).with_context(|| format!("--tap {name} in netns"))?)
        }
        (Some(name), None) => Some(Tap::open(name).with_context(|| format!("--tap {name}"))?),
        (None, _) => None,
    };
    if let Some(t) = &tap {
        tracing::info!(tap = t.name(), "TAP open");
    }
    let pcap = args
        .pcap
        .as_deref()
        .map(PcapWriter::create)
        .transpose()
        .context("--pcap")?;
    let policy = args
        .policy
        .as_deref()
        .map(chimney_device::policy::FilePolicy::load)
        .transpose()
        .context("--policy")?;
    let cfg = DeviceConfig {
        queue_pairs: args.queue_pairs,
        max_queue_size: args.max_queue_size,
        limits: {
            let l = ObjectLimits {
                neighbors: args.max_neighbors,
                paths: args.max_paths,
                tcp: args.max_tcp,
            };
            policy.as_ref().map_or(l, |p| p.limits(l))
        },
        data_plane: chimney_device::data_plane::DataPlaneOptions {
            impair: args
                .impair
                .as_deref()
                .map(chimney_device::data_plane::parse_impair)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--impair: {e}"))?,
            policy,
        },
        ..DeviceConfig::default()
    };
    let device = Device::new(cfg, tap, pcap)?;
    if let Some(p) = device.pcap() {
        // SIGTERM/SIGINT flush below; a SIGKILL skips that, so also flush every second.
        std::thread::Builder::new()
            .name("pcap-flush".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                if let Err(e) = p.flush() {
                    tracing::warn!(error = %e, "flush pcap");
                }
            })
            .context("spawn pcap flusher")?;
    }
    let listener = Device::listen(&args.socket_path)?;
    {
        let pcap = device.pcap();
        let socket = args.socket_path.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let sig = chimney_device::sys::wait_termination_signal();
                tracing::info!(?sig, "terminating");
                if let Some(p) = pcap {
                    if let Err(e) = p.flush() {
                        tracing::warn!(error = %e, "flush pcap");
                    }
                }
                let _ = std::fs::remove_file(&socket);
                std::process::exit(0);
            })
            .context("spawn signal thread")?;
    }
    tracing::info!(socket = %args.socket_path.display(), queue_pairs = args.queue_pairs, "listening");
    device.serve(&listener)?;
    Ok(())
}
