//! `chimney-harness`: run scenario suites against the device and a real Linux peer.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use chimney_harness::scenario::{self, checklist, report, runner, Outcome, RunOptions, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "chimney-harness",
    version,
    about = "Chimney Testbed harness: plays host stack and VMM, runs scenario suites against \
             chimney-device and a real Linux TCP peer, and judges the result against the \
             chimney checklist (C-001…C-234)"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `chimney_harness=debug`.
    #[arg(long, default_value = "warn", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run scenarios (default: the library in harness/scenarios). Needs root unless
    /// --device-socket is given. Exit status 0 only if nothing failed.
    Run(RunArgs),
    /// List the scenarios (name, steps, items verified, summary) without running them.
    List(ListArgs),
    /// For each of the 234 checklist items, the scenarios that verify it; totals by section.
    Coverage(ListArgs),
    /// The foundation sequence of issue 2 as PASS/FAIL lines (kept for diagnosis).
    Smoke(chimney_harness::smoke::SmokeOptions),
    /// Boot a QEMU guest (TCG) whose guest agent owns the NIC through the guest-driver's
    /// Linux binding and runs scenarios through the device against a real Linux peer
    /// (docs/qemu.md). Needs root and QEMU 10. Exit status 0 only if everything passed.
    Qemu(QemuArgs),
    /// Inside a QEMU guest (started by `qemu`): take the virtio-net function, run the
    /// scenarios, report TAP lines and a JSON summary on the console.
    GuestAgent(GuestAgentArgs),
}

#[derive(Args, Debug)]
struct QemuArgs {
    /// Scenario files or directories (default: images/scenarios/smoke, the QEMU smoke
    /// suite).
    paths: Vec<PathBuf>,
    /// Only scenarios whose name matches this glob.
    #[arg(long, value_name = "GLOB")]
    filter: Option<String>,
    /// Master seed (printed; pass it back to replay).
    #[arg(long)]
    seed: Option<u64>,
    /// The guest agent executable (default: this executable).
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// The chimney-device executable (default: found/built like `run` does).
    #[arg(long, value_name = "PATH")]
    device: Option<PathBuf>,
    /// Where logs, console and pcap go (default: target/qemu-runs/<pid>).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Bound for the whole run after the image is ready, in seconds.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(10..=7200))]
    timeout: u64,
    /// Fault injection: kill the device once the peer has read this many bytes.
    #[arg(long, value_name = "BYTES")]
    kill_device_after: Option<u64>,
}

#[derive(Args, Debug)]
struct GuestAgentArgs {
    /// Scenario files or directories.
    paths: Vec<PathBuf>,
    #[arg(long, value_name = "GLOB")]
    filter: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Scenario files or directories (default: the library).
    paths: Vec<PathBuf>,
    /// Only scenarios whose name matches this glob (`*`, `?`).
    #[arg(long, value_name = "GLOB")]
    filter: Option<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    select: ListArgs,
    /// Master seed; every random choice derives from it (printed, pass it back to replay).
    #[arg(long)]
    seed: Option<u64>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write a TAP 13 report here.
    #[arg(long, value_name = "FILE")]
    tap: Option<PathBuf>,
    /// Write a JSON report here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the device's wire capture of each scenario here (`<scenario>.pcap`).
    #[arg(long, value_name = "DIR")]
    pcap_dir: Option<PathBuf>,
    /// Write a time-sequence SVG per TCP connection here (needs the pcap; uses a
    /// temporary directory when --pcap-dir is not given).
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// The chimney-device executable to start for each scenario.
    #[arg(long, value_name = "PATH", conflicts_with = "device_socket")]
    device: Option<PathBuf>,
    /// Attach to an already running device's vhost-user socket instead of starting one.
    #[arg(long, value_name = "PATH")]
    device_socket: Option<PathBuf>,
    /// Bound for one expected event, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    event_timeout: u64,
}

/// The library shipped with the harness: next to the sources, or `./harness/scenarios`.
fn default_paths() -> Vec<PathBuf> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    if here.is_dir() {
        return vec![here];
    }
    vec![PathBuf::from("harness/scenarios")]
}

/// Load every scenario; all load errors are printed, one per file.
fn load_all(sel: &ListArgs) -> anyhow::Result<Vec<Scenario>> {
    let paths = if sel.paths.is_empty() {
        default_paths()
    } else {
        sel.paths.clone()
    };
    let files = scenario::format::discover(&paths).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match scenario::load(&f) {
            Ok(s) => out.push(s),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        bail!("{} scenario file(s) could not be loaded", errors.len());
    }
    let mut names = std::collections::BTreeMap::new();
    for s in &out {
        if let Some(prev) = names.insert(s.name.clone(), s.file.clone()) {
            bail!(
                "scenario name `{}` is used by {} and {}",
                s.name,
                prev.display(),
                s.file.display()
            );
        }
    }
    if let Some(g) = &sel.filter {
        out.retain(|s| scenario::format::glob_match(g, &s.name));
    }
    Ok(out)
}

fn list(sel: &ListArgs) -> anyhow::Result<ExitCode> {
    let scenarios = load_all(sel)?;
    for s in &scenarios {
        let items: Vec<String> = s.verifies.iter().map(|i| i.to_string()).collect();
        println!(
            "{:<32} {:>3} steps  {}\n{:<32} {}",
            s.name,
            s.steps.len(),
            s.summary,
            "",
            items.join(" ")
        );
    }
    println!("{} scenarios", scenarios.len());
    Ok(ExitCode::SUCCESS)
}

fn coverage(sel: &ListArgs) -> anyhow::Result<ExitCode> {
    let scenarios = load_all(sel)?;
    print!("{}", report::coverage(&scenarios, &checklist::items()));
    Ok(ExitCode::SUCCESS)
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let scenarios = load_all(&args.select)?;
    if scenarios.is_empty() {
        bail!("no scenario matches");
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && args.device_socket.is_none() {
        bail!(
            "chimney-harness run needs root: each scenario creates a network namespace with a \
             TAP device and starts chimney-device inside it. Run it as root (sudo \
             chimney-harness run …), or attach to a device you started yourself with \
             --device-socket PATH"
        );
    }
    scenario::cleanup::install_interrupt_handler();
    let seed = args.seed.unwrap_or_else(rand::random);
    println!(
        "chimney-harness: {} scenarios, seed {seed} (replay: --seed {seed})",
        scenarios.len()
    );
    let mut pcap_dir = args.pcap_dir.clone();
    if pcap_dir.is_none() && args.plots.is_some() {
        pcap_dir = Some(std::env::temp_dir().join(format!("chimney-pcap-{}", std::process::id())));
    }
    for d in [&pcap_dir, &args.plots].into_iter().flatten() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let opts = RunOptions {
        seed,
        device: args.device.clone(),
        device_socket: args.device_socket.clone(),
        pcap_dir,
        plots_dir: args.plots.clone(),
        event_timeout: Duration::from_secs(args.event_timeout),
        ..RunOptions::default()
    };
    let bar = indicatif::ProgressBar::new(scenarios.len() as u64);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut reports = Vec::new();
    for s in &scenarios {
        bar.set_message(s.name.clone());
        let r = runner::run_scenario(s, &opts);
        let line = format!(
            "{:<11} {} ({:.2}s)",
            match r.outcome {
                Outcome::Passed => "PASS",
                Outcome::Failed => "FAIL",
                Outcome::Unsupported => "UNSUPPORTED",
            },
            r.name,
            r.duration.as_secs_f64()
        );
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
        bar.inc(1);
        reports.push(r);
    }
    bar.finish_and_clear();
    print!("\n{}", report::summary_table(&reports, seed));
    if let Some(p) = &args.junit {
        let xml = report::junit(&reports, seed).map_err(anyhow::Error::msg)?;
        std::fs::write(p, xml).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.tap {
        std::fs::write(p, report::tap(&reports))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.json {
        let j = report::json(&reports, seed).map_err(anyhow::Error::msg)?;
        std::fs::write(p, j).with_context(|| format!("writing {}", p.display()))?;
    }
    let t = report::totals(&reports);
    Ok(if t.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn qemu(a: &QemuArgs) -> anyhow::Result<ExitCode> {
    use chimney_harness::qemu;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("chimney-harness qemu needs root (network namespace, TAP, QEMU with the device)");
    }
    let major =
        qemu::qemu_major(std::path::Path::new("qemu-system-x86_64")).map_err(anyhow::Error::msg)?;
    if major < 10 {
        bail!(
            "qemu-system-x86_64 is version {major}: QEMU 7.2 segfaults under TCG with \
             vhost-user-net; run scripts/install-qemu (QEMU 10 from bookworm-backports)"
        );
    }
    scenario::cleanup::install_interrupt_handler();
    let agent = match &a.agent {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding this executable")?,
    };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let paths = if a.paths.is_empty() {
        vec![repo.join("images/scenarios/smoke")]
    } else {
        a.paths.clone()
    };
    let log_dir = a.log_dir.clone().unwrap_or_else(|| {
        repo.join("target/qemu-runs")
            .join(std::process::id().to_string())
    });
    let seed = a.seed.unwrap_or_else(rand::random);
    let mut opts = qemu::QemuOptions::new(agent, paths, log_dir.clone());
    opts.device = a.device.clone();
    opts.filter = a.filter.clone();
    opts.seed = seed;
    opts.timeout = Duration::from_secs(a.timeout);
    opts.kill_device_after_peer_bytes = a.kill_device_after;
    opts.repo = repo;
    println!(
        "chimney-harness qemu: seed {seed} (replay: --seed {seed}), logs in {}",
        log_dir.display()
    );
    let report = qemu::run(&opts).map_err(anyhow::Error::msg)?;
    print!("{}", report.text());
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .init();
    let r = match &cli.command {
        Command::Run(a) => run(a),
        Command::List(a) => list(a),
        Command::Coverage(a) => coverage(a),
        Command::Qemu(a) => qemu(a),
        Command::GuestAgent(a) => {
            let code = chimney_harness::guest::agent_main(&chimney_harness::guest::AgentOptions {
                paths: a.paths.clone(),
                filter: a.filter.clone(),
                seed: a.seed,
            });
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Smoke(opts) => {
            let report = chimney_harness::smoke::run(opts);
            print!("{report}");
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    };
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chimney-harness: {e:#}");
            ExitCode::from(2)
        }
    }
}
