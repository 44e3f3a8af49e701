//! `chimney-bench`: run the suite (issue 8 items 1..5), print the table, write JSON with
//! `--json FILE`. Needs root (namespaces, TAP). docs/benchmarks.md has the method.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chimney_bench::bulk::{self, Direction};
use chimney_bench::control::{self, percentile};
use chimney_bench::progress::Progress;
use chimney_bench::report::{num, Figure, Report};
use chimney_bench::rig::{device_binary, RigOptions};
use chimney_bench::small_ops::{self, Kind};
use chimney_bench::{scaling, sys, veth};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Chimney benchmark suite: offload vs host stack vs kernel, one run (needs root)")]
struct Args {
    /// About one minute: shorter windows, smaller trees and fewer connections.
    #[arg(long)]
    quick: bool,
    /// Write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Only these items (1..=5), e.g. `--only 1,2`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Seconds per throughput/rate window (default 3 with --quick, else 8).
    #[arg(long)]
    secs: Option<u64>,
    /// Connection counts of the bulk-offload runs (item 3).
    #[arg(long, value_delimiter = ',')]
    bulk: Vec<usize>,
    /// Initiate/terminate round trips measured (item 3; default 200 with --quick, else 2000).
    #[arg(long)]
    rounds: Option<usize>,
    /// Connection counts of the scaling runs (item 5).
    #[arg(long, value_delimiter = ',')]
    scaling: Vec<usize>,
}

/// Sizes of one run.
struct Plan {
    secs: Duration,
    rounds: usize,
    bulk: Vec<usize>,
    bulk_budget: Duration,
    max_device_rss: u64,
    scaling: Vec<usize>,
}

impl Plan {
    fn of(a: &Args) -> Plan {
        let secs = Duration::from_secs(a.secs.unwrap_or(if a.quick { 3 } else { 8 }));
        let pick = |given: &Vec<usize>, quick: &[usize], full: &[usize]| {
            if !given.is_empty() {
                given.clone()
            } else if a.quick {
                quick.to_vec()
            } else {
                full.to_vec()
            }
        };
        Plan {
            secs,
            rounds: a.rounds.unwrap_or(if a.quick { 200 } else { 2000 }),
            bulk: pick(&a.bulk, &[1000, 20_000], &[1000, 100_000, 1_000_000]),
            bulk_budget: Duration::from_secs(if a.quick { 15 } else { 150 }),
            max_device_rss: 8 << 30,
            scaling: pick(&a.scaling, &[1, 100, 1000], &[1, 100, 10_000]),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The device's per-frame warnings (e.g. pair 0 rx drops while the host stack is busy)
    // would bury the progress display; a caller can still ask for them.
    if std::env::var_os("CHIMNEY_DEVICE_LOG").is_none() {
        std::env::set_var("CHIMNEY_DEVICE_LOG", "error");
    }
    let plan = Plan::of(&args);
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let machine = sys::machine();
    let device_bin = device_binary().context("locating chimney-device")?;
    let opts = RigOptions::new(device_bin);
    let p = Progress::new();
    p.done(format!("machine: {machine}"));
    let want = |i: u8| args.only.is_empty() || args.only.contains(&i);
    let mut figures = Vec::new();
    if want(1) || want(2) {
        items_1_2(&opts, &plan, &p, &mut figures)?;
    }
    if want(3) {
        item_3(&opts, &plan, &p, &mut figures)?;
    }
    if want(4) {
        item_4(&opts, &plan, &p, &mut figures)?;
    }
    if want(5) {
        item_5(&opts, &plan, &p, &mut figures)?;
    }
    p.finish();
    let report = Report {
        suite: "chimney-bench".into(),
        version: 1,
        quick: args.quick,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        started_unix,
        wall_seconds: started.elapsed().as_secs_f64(),
        figures,
    };
    println!("{}", report.table());
    for f in report.figures.iter().filter(|f| !f.note.is_empty()) {
        println!("- {}: {}", f.key, f.note);
    }
    println!("wall clock {:.0} s", report.wall_seconds);
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn dir_names(dir: Direction) -> (&'static str, &'static str) {
    match dir {
        Direction::Tx => ("tx", "host → peer"),
        Direction::Rx => ("rx", "peer → host"),
    }
}

fn items_1_2(
    opts: &RigOptions,
    plan: &Plan,
    p: &Progress,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    p.set("kernel TCP over veth (baseline)");
    let veth = veth::kernel_over_veth(plan.secs).context("veth baseline")?;
    p.done(format!("kernel TCP over veth: {} MB/s", num(veth / 1e6)));
    for dir in [Direction::Tx, Direction::Rx] {
        let (d, arrow) = dir_names(dir);
        let o = bulk::offloaded(opts, dir, plan.secs, p)
            .with_context(|| format!("offloaded {arrow}"))?;
        p.done(format!(
            "offloaded {arrow}: {} MB/s, host {:.3} s/GiB, device {:.3} s/GiB",
            num(o.rate() / 1e6),
            o.host_cpu_per_gib(),
            o.device_cpu_per_gib()
        ));
        let h = bulk::host_stack(opts, dir, plan.secs, p)
            .with_context(|| format!("host stack {arrow}"))?;
        p.done(format!(
            "host stack {arrow}: {} MB/s, host {:.3} s/GiB, device {:.3} s/GiB",
            num(h.rate() / 1e6),
            h.host_cpu_per_gib(),
            h.device_cpu_per_gib()
        ));
        figures.push(
            Figure::new(
                &format!("offload_{d}_throughput"),
                1,
                &format!("offloaded bulk throughput, 1 connection, {arrow}"),
                o.rate() / 1e6,
                "MB/s",
            )
            .against("kernel TCP over veth", veth / 1e6, "MB/s")
            .target(">= 0.5")
            .note(format!(
                "{:.0} MiB in {:.1} s",
                o.bytes as f64 / (1 << 20) as f64,
                o.spent.wall.as_secs_f64()
            )),
        );
        figures.push(
            Figure::new(
                &format!("hoststack_{d}_throughput"),
                2,
                &format!("host-stack path throughput, 1 connection, {arrow}"),
                h.rate() / 1e6,
                "MB/s",
            )
            .against("kernel TCP over veth", veth / 1e6, "MB/s"),
        );
        figures.push(
            Figure::new(
                &format!("offload_{d}_host_cpu_per_gib"),
                2,
                &format!("host CPU per GiB, offloaded, {arrow}"),
                o.host_cpu_per_gib(),
                "s/GiB",
            )
            .against("host-stack path", h.host_cpu_per_gib(), "s/GiB")
            .target("<= 0.2"),
        );
        figures.push(
            Figure::new(
                &format!("offload_{d}_device_cpu_per_gib"),
                2,
                &format!("device CPU per GiB, offloaded, {arrow}"),
                o.device_cpu_per_gib(),
                "s/GiB",
            )
            .against(
                "host-stack path (device NIC path)",
                h.device_cpu_per_gib(),
                "s/GiB",
            ),
        );
    }
    Ok(())
}

fn item_3(
    opts: &RigOptions,
    plan: &Plan,
    p: &Progress,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    p.set("control ring floor (NEGOTIATE round trips)");
    let floor = control::negotiate_round_trips(opts, plan.rounds).context("negotiate")?;
    let floor50 = percentile(&floor, 0.5);
    let lat = control::round_trips(opts, plan.rounds, p).context("round trips")?;
    let n = lat.initiate_us.len();
    for (key, what, v) in [
        (
            "initiate",
            "initiate round trip (neighbor → path → 1 TCP)",
            &lat.initiate_us,
        ),
        (
            "terminate",
            "terminate round trip (same tree, state returned)",
            &lat.terminate_us,
        ),
    ] {
        for (q, qn) in [(0.5, "p50"), (0.99, "p99")] {
            figures.push(
                Figure::new(
                    &format!("{key}_{qn}_us"),
                    3,
                    &format!("{what}, {qn}"),
                    percentile(v, q),
                    "µs",
                )
                .against("NEGOTIATE round trip p50 (ring floor)", floor50, "µs")
                .note(format!("{n} round trips")),
            );
        }
    }
    p.done(format!(
        "initiate p50 {} µs, terminate p50 {} µs, ring floor {} µs",
        num(percentile(&lat.initiate_us, 0.5)),
        num(percentile(&lat.terminate_us, 0.5)),
        num(floor50)
    ));
    let single_rate = 1e6 / percentile(&lat.initiate_us, 0.5);
    let kernel_sock = veth::kernel_tcp_sock_bytes().ok();
    let mut first_rate = None;
    // Bytes per idle connection of the largest run so far: a size whose projected device
    // RSS exceeds the cap is not started (it would only stop at the cap, or swap the
    // machine the other engineers share); its projection is reported instead.
    let mut per_conn: Option<(usize, f64)> = None;
    for &n in &plan.bulk {
        if let Some((m, b)) = per_conn {
            let projected = b * n as f64;
            if projected > plan.max_device_rss as f64 {
                let total = sys::mem_total().unwrap_or(0) as f64;
                let gib = |v: f64| v / (1u64 << 30) as f64;
                let why = format!(
                    "not run: {} B per idle connection (measured at {m}) × {n} = {:.1} GiB of device RSS, above the {:.0} GiB cap of this run on a {:.0} GiB machine",
                    num(b),
                    gib(projected),
                    gib(plan.max_device_rss as f64),
                    gib(total)
                );
                p.done(format!("bulk {n}: {why}"));
                figures.push(
                    Figure::new(
                        &format!("idle_conn_projected_gib_{n}"),
                        3,
                        &format!("projected device RSS for {n} idle offloaded connections"),
                        gib(projected),
                        "GiB",
                    )
                    .against("machine memory", gib(total), "GiB")
                    .note(why),
                );
                continue;
            }
        }
        let budget = plan.bulk_budget;
        let b = control::bulk(opts, n, budget, plan.max_device_rss, p)
            .with_context(|| format!("bulk offload of {n}"))?;
        p.done(format!(
            "bulk {n}: {} offloaded in {} trees of ≤{} at {} conn/s, {} B/conn RSS{}",
            b.offloaded,
            b.trees,
            b.per_tree,
            num(b.rate()),
            num(b.bytes_per_conn()),
            b.stopped
                .as_deref()
                .map(|s| format!(" — stopped: {s}"))
                .unwrap_or_default()
        ));
        let mut note = format!(
            "{} of {} offloaded in {} initiate requests of ≤{} TCP blocks, {:.1} s in requests, device CPU {:.1} s",
            b.offloaded,
            b.wanted,
            b.trees,
            b.per_tree,
            b.busy.as_secs_f64(),
            b.device_cpu.as_secs_f64()
        );
        if let Some(s) = &b.stopped {
            note.push_str(&format!("; stopped early: {s}"));
        }
        let rate = Figure::new(
            &format!("bulk_offload_{n}_per_s"),
            3,
            &format!("bulk offload rate, {n} TCP objects"),
            b.rate(),
            "conn/s",
        )
        .note(note.clone());
        figures.push(match first_rate {
            None => rate.against("one-connection initiate (1 / p50)", single_rate, "conn/s"),
            Some((n0, r0)) => rate.against(&format!("bulk rate at {n0}"), r0, "conn/s"),
        });
        first_rate.get_or_insert((n, b.rate()));
        per_conn = Some((n, b.bytes_per_conn()));
        if n >= 10_000 {
            let mem = Figure::new(
                &format!("idle_conn_bytes_{n}"),
                3,
                &format!("device RSS per idle offloaded connection, {n}"),
                b.bytes_per_conn(),
                "B",
            )
            .note(note);
            figures.push(match kernel_sock {
                Some(k) => mem.against("kernel TCP socket object (slab)", k, "B"),
                None => mem,
            });
        }
    }
    Ok(())
}

fn item_4(
    opts: &RigOptions,
    plan: &Plan,
    p: &Progress,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    p.set("kernel 64-byte writes/reads over veth (baseline)");
    let (kw, kr) = veth::kernel_small_ops(plan.secs, small_ops::PAYLOAD).context("veth small")?;
    p.done(format!(
        "kernel over veth, 64 B: {} writes/s, {} reads/s",
        num(kw),
        num(kr)
    ));
    for (kind, key, what, base, base_what) in [
        (
            Kind::SendComplete,
            "send_complete",
            "send+completion, 64 B",
            kw,
            "kernel write() 64 B, TCP_NODELAY, over veth",
        ),
        (
            Kind::ReceiveReturn,
            "receive_return",
            "receive indication+return, peer writes 64 B",
            kr,
            "kernel read() 64 B over veth",
        ),
    ] {
        let o = small_ops::run(opts, kind, plan.secs, p).with_context(|| what.to_string())?;
        p.done(format!(
            "{what}: {} ops/s, {} per device core, {:.0} B/op",
            num(o.per_sec()),
            num(o.per_device_core_sec()),
            o.bytes_per_op()
        ));
        let note = format!(
            "{} ops, {:.0} payload bytes per op, device CPU {:.2} s in {:.1} s",
            o.ops,
            o.bytes_per_op(),
            o.spent.device_cpu.as_secs_f64(),
            o.spent.wall.as_secs_f64()
        );
        figures.push(
            Figure::new(
                &format!("{key}_ops_per_s"),
                4,
                &format!("{what}, ops/s"),
                o.per_sec(),
                "ops/s",
            )
            .against(base_what, base, "ops/s")
            .note(note.clone()),
        );
        figures.push(
            Figure::new(
                &format!("{key}_ops_per_device_core"),
                4,
                &format!("{what}, per device core (ops per device CPU second)"),
                o.per_device_core_sec(),
                "ops/core-s",
            )
            .against(base_what, base, "ops/s")
            .note(note),
        );
    }
    Ok(())
}

fn item_5(
    opts: &RigOptions,
    plan: &Plan,
    p: &Progress,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let mut first: Option<scaling::Scaled> = None;
    for &n in &plan.scaling {
        let s = scaling::run(opts, n, plan.secs, p).with_context(|| format!("scaling {n}"))?;
        p.done(format!(
            "scaling {n}: {} MB/s, {} ns device CPU per segment, {} of {n} moved data, {} TAP frames",
            num(s.rate() / 1e6),
            num(s.device_ns_per_segment()),
            s.active,
            s.frames
        ));
        let note = format!(
            "{} connections completed a send in the window; {} TAP frames for {:.0} MiB",
            s.active,
            s.frames,
            s.bytes as f64 / (1 << 20) as f64
        );
        let base = first.unwrap_or(s);
        figures.push(
            Figure::new(
                &format!("scaling_{n}_throughput"),
                5,
                &format!("total throughput, {n} active offloaded connections"),
                s.rate() / 1e6,
                "MB/s",
            )
            .against(
                &format!("{} connection(s)", base.conns),
                base.rate() / 1e6,
                "MB/s",
            )
            .note(note.clone()),
        );
        figures.push(
            Figure::new(
                &format!("scaling_{n}_device_ns_per_segment"),
                5,
                &format!("device CPU per 1448-byte segment, {n} connections"),
                s.device_ns_per_segment(),
                "ns",
            )
            .against(
                &format!("{} connection(s)", base.conns),
                base.device_ns_per_segment(),
                "ns",
            )
            .note(note),
        );
        first.get_or_insert(s);
    }
    Ok(())
}
