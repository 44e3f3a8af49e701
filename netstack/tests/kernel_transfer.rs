//! Bulk transfer against the Linux kernel's TCP on a TAP in a private namespace (DESIGN rule 6):
//! IPv4 and IPv6, active and passive open, data both ways at once, SHA-256 equal at both ends,
//! over the impairment matrix loss {0,1,5,20}% × reorder {off,on} × duplication {off,on} and
//! 1% corruption. Each cell prints its seed; re-run one cell with
//! `NETSTACK_SEED=<seed> NETSTACK_CELL=<cell name> cargo test -p chimney-netstack --test kernel_transfer`.
//! `NETSTACK_BYTES` overrides the per-direction size (default 64 MiB).

mod support;

use std::time::Duration;

use chimney_netstack::impair::ImpairConfig;
use chimney_netstack::{Event, TcpConnectionState};
use support::*;

const MIB: u64 = 1 << 20;

fn bytes() -> u64 {
    std::env::var("NETSTACK_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64 * MIB)
}

#[derive(Clone, Copy, Debug)]
pub struct Cell {
    loss: u32,
    reorder: bool,
    dup: bool,
    corrupt: bool,
}

impl Cell {
    fn name(&self) -> String {
        format!(
            "loss{}{}{}{}",
            self.loss,
            if self.reorder { "-reorder" } else { "" },
            if self.dup { "-dup" } else { "" },
            if self.corrupt { "-corrupt1" } else { "" }
        )
    }
    fn impair(&self) -> ImpairConfig {
        if self.loss == 0 && !self.reorder && !self.dup && !self.corrupt {
            return ImpairConfig::default(); // a clean wire: frames go straight to the TAP
        }
        ImpairConfig {
            loss: f64::from(self.loss) / 100.0,
            reorder: if self.reorder { 0.05 } else { 0.0 },
            reorder_delay: Duration::from_millis(2),
            duplicate: if self.dup { 0.02 } else { 0.0 },
            corrupt: if self.corrupt { 0.01 } else { 0.0 },
            ..Default::default()
        }
    }
}

/// One connection: `len` bytes each way, checked by SHA-256 at both ends.
pub fn transfer(cell: Cell, v6: bool, active: bool, seed: u64, len: u64) {
    transfer_opts(cell, v6, active, seed, len, None, false);
}

/// As `transfer`; with `migrate_at`, once that many bytes went one way the connection is
/// exported from the engine and imported into a fresh one, which finishes the transfer.
pub fn transfer_opts(
    cell: Cell,
    v6: bool,
    active: bool,
    seed: u64,
    len: u64,
    migrate_at: Option<u64>,
    tso: bool,
) {
    let name = format!(
        "{}-{}-{}{}{}",
        cell.name(),
        if v6 { "v6" } else { "v4" },
        if active { "active" } else { "passive" },
        if migrate_at.is_some() { "-migrate" } else { "" },
        if tso { "-tso" } else { "" }
    );
    println!("cell {name}: seed {seed:#x} (re-run: NETSTACK_SEED={seed:#x} NETSTACK_CELL={name})");
    let started = std::time::Instant::now();
    let mut cfg = test_engine_config(seed);
    let offload = if tso {
        // TSO super-frames and partial checksums to the TAP, offloaded frames from it.
        cfg.offload = chimney_netstack::TxOffload {
            tso: true,
            checksum: true,
        };
        chimney_wire::Offload::ALL
    } else {
        Default::default()
    };
    let mut rig = Rig::with_offload("xfer", seed, cell.impair(), cfg, offload);
    // A pcap per 64 MiB connection is ~150 MB: only when asked for.
    if std::env::var("NETSTACK_PCAP_DIR").is_ok() {
        rig = rig.with_pcap(&name);
    }
    let (to_kernel_seed, from_kernel_seed) = (seed ^ 1, seed ^ 2);
    let port = 5001;
    let peer = move |s: std::net::TcpStream| {
        let r = s.try_clone().expect("clone peer stream");
        let sink = std::thread::spawn(move || kernel_sink(r));
        let sent = kernel_source(s, from_kernel_seed, len);
        let (n, sha) = sink.join().expect("peer sink thread");
        (sent, n, sha)
    };
    let (peer_thread, conn) = if active {
        let t = kernel_accept(&rig, v6, port, peer);
        let now = rig.now();
        let c = rig
            .engine
            .connect(now, std::net::SocketAddr::new(peer_ip(v6), port), None)
            .expect("connect");
        (t, c)
    } else {
        rig.engine.listen(port);
        let t = kernel_connect(&rig, v6, port, peer);
        let mut conn = None;
        rig.run_until(Duration::from_secs(30), "passive open", |r| {
            conn = r.events.iter().find_map(|e| match e {
                Event::Accepted { conn, .. } => Some(*conn),
                _ => None,
            });
            conn.is_some()
        });
        (t, conn.expect("accepted"))
    };
    let mut tx = Sender::new(conn, to_kernel_seed, len);
    let mut rx = Receiver::new(conn);
    let t0 = std::time::Instant::now();
    let mut rx_done = None;
    let mut migrated = false;
    let mut stats = None;
    // Fail fast: once our side gives up (TimedOut / Reset) the kernel keeps retrying for
    // ~15 min, so waiting for `done` would only end at the nextest kill. `seen` is a cursor
    // into the growing event list; `last` is our TCB just before the most recent step.
    let mut seen = 0;
    let mut last = None;
    // Stall snapshot: after 30 s without progress either way, print both sides once (the
    // kernel may give up later, and then its socket is gone).
    let mut progress = (0u64, 0u64, std::time::Instant::now());
    let mut reported = false;
    rig.run_until(
        Duration::from_secs(limit_secs()),
        &format!("{name} transfer"),
        |r| {
            tx.feed(&mut r.engine);
            rx.drain(&mut r.engine);
            if rx.n == len && rx_done.is_none() {
                rx_done = Some(t0.elapsed());
            }
            if let Ok(s) = r.engine.conn_stats(tx.conn) {
                stats = Some(s);
            }
            if let Some(at) = migrate_at {
                let in_flight = r.engine.tcb(tx.conn).is_ok_and(|t| {
                    t.snd_max != t.snd_una && t.state == TcpConnectionState::Established
                });
                // Halfway through either direction, while our data is in flight.
                let acked = tx.off - r.engine.tcb(tx.conn).map_or(0, |t| t.send.len() as u64);
                if !migrated && (acked >= at || rx.n >= at) && in_flight {
                    // Export mid-transfer with data in flight and unacknowledged; import into a
                    // brand-new engine instance (DESIGN rule 5).
                    let now = r.now();
                    let st = r.engine.export(now, tx.conn).expect("export mid-transfer");
                    assert!(
                        st.tcp.delegated.snd_max != st.tcp.delegated.snd_una,
                        "export should catch data in flight"
                    );
                    // Owed frames of the old engine go out first.
                    r.flush_pending();
                    let mut fresh =
                        chimney_netstack::Engine::new(test_engine_config(seed ^ 0xfeed), now)
                            .expect("fresh engine");
                    let h = fresh.import(now, &st).expect("import");
                    let again = {
                        let mut probe = chimney_netstack::Engine::new(test_engine_config(1), now)
                            .expect("engine");
                        let h2 = probe.import(now, &st).expect("import copy");
                        probe.export(now, h2).expect("export copy")
                    };
                    assert_eq!(
                        again.tcp, st.tcp,
                        "export → import → export must be the identity"
                    );
                    r.engine = fresh;
                    tx.conn = h;
                    rx.conn = h;
                    migrated = true;
                    println!(
                        "cell {name}: migrated at {} bytes sent / {} received, {} bytes unacked",
                        tx.off,
                        rx.n,
                        st.tcp.send_data.len()
                    );
                }
            }
            if let Some(e) = r.events[seen..]
                .iter()
                .find(|e| matches!(e, Event::TimedOut(c) | Event::Reset(c) if *c == tx.conn))
            {
                panic!(
                    "{name}: our side ended the connection with {e:?} (seed {seed:#x}; re-run: \
                     NETSTACK_SEED={seed:#x} NETSTACK_CELL={name}); sent {} / {len}, received {} / \
                     {len}; our TCB before that step {last:?}; our sender {stats:?}",
                    tx.off, rx.n
                );
            }
            seen = r.events.len();
            let acked = tx.off - r.engine.tcb(tx.conn).map_or(0, |t| t.send.len() as u64);
            if (acked, rx.n) != (progress.0, progress.1) {
                progress = (acked, rx.n, std::time::Instant::now());
            } else if !reported && progress.2.elapsed() > Duration::from_secs(30) {
                reported = true;
                let tcb = r.engine.tcb(tx.conn).ok().map(|t| t.debug_summary());
                println!(
                    "cell {name}: STALL (no progress for 30 s; seed {seed:#x}) sent {} received {}\n\
                     our TCB {tcb:?}\n{}",
                    acked,
                    rx.n,
                    r.stall_report(&name)
                );
            }
            last = r.engine.tcb(tx.conn).ok().map(|t| {
                format!(
                    "state {:?} snd_una {:#x} snd_max {:#x} snd_wnd {} rcv_nxt {:#x} rtx_count {}",
                    t.state,
                    t.snd_una,
                    t.snd_max,
                    t.snd_wnd,
                    t.rcv_nxt,
                    t.retransmit_count()
                )
            });
            let peer_done = peer_thread.is_finished();
            let st = r.engine.state(tx.conn).ok();
            peer_done
                && rx.n == len
                && matches!(
                    st,
                    Some(TcpConnectionState::TimeWait) | Some(TcpConnectionState::Closed) | None
                )
        },
    );
    let (kernel_sent, kernel_got, kernel_sha) = peer_thread.join().expect("peer thread");
    assert_eq!(
        migrated,
        migrate_at.is_some(),
        "{name}: migration happened as asked"
    );
    let want_to_kernel = expected_sha(to_kernel_seed, len);
    let want_from_kernel = expected_sha(from_kernel_seed, len);
    assert_eq!(kernel_sent, len);
    assert_eq!(
        (kernel_got, hex(&kernel_sha)),
        (len, hex(&want_to_kernel)),
        "{name}: bytes/SHA-256 seen by the kernel vs sent by us (seed {seed:#x})"
    );
    assert_eq!(
        (rx.n, hex(&rx.sha())),
        (len, hex(&want_from_kernel)),
        "{name}: bytes/SHA-256 we received vs sent by the kernel (seed {seed:#x})"
    );
    println!(
        "cell {name}: ok in {:.1?} (kernel→us done at {rx_done:.1?}; our sender {stats:?}), up {:?}, down {:?}",
        started.elapsed(),
        rig.up.stats(),
        rig.down.stats()
    );
}

#[test]
fn export_import_mid_transfer_64mib_ipv4_keeps_sha256() {
    // Needs a long transfer to catch it mid-way, whatever NETSTACK_BYTES says.
    let len = bytes().max(16 * MIB);
    transfer_opts(
        Cell {
            loss: 0,
            reorder: false,
            dup: false,
            corrupt: false,
        },
        false,
        true,
        seed_from_env(0x4444),
        len,
        Some(len / 4),
        false,
    );
}

#[test]
fn export_import_mid_transfer_lossy_ipv6_passive_keeps_sha256() {
    let len = (bytes() / 4).max(8 * MIB);
    transfer_opts(
        Cell {
            loss: 1,
            reorder: true,
            dup: false,
            corrupt: false,
        },
        true,
        false,
        seed_from_env(0x4455),
        len,
        Some(len / 4),
        false,
    );
}

#[test]
fn tso_and_checksum_offload_64mib_both_ways_ipv4_and_ipv6() {
    // Our TSO super-frames (IFF_VNET_HDR + TUNSETOFFLOAD) and the kernel's GRO'd, partially
    // checksummed frames back: the bytes must still be exact.
    let clean = Cell {
        loss: 0,
        reorder: false,
        dup: false,
        corrupt: false,
    };
    transfer_opts(
        clean,
        false,
        true,
        seed_from_env(0x5050),
        bytes(),
        None,
        true,
    );
    transfer_opts(
        clean,
        true,
        false,
        seed_from_env(0x5051),
        bytes(),
        None,
        true,
    );
}

#[test]
fn clean_ipv4_active_1mib_both_ways() {
    transfer(
        Cell {
            loss: 0,
            reorder: false,
            dup: false,
            corrupt: false,
        },
        false,
        true,
        seed_from_env(11),
        MIB,
    );
}

/// Per-connection bound of the transfer phase. Below nextest's 600 s kill so that a stuck
/// connection fails with its own message (state, stats, seed) rather than a bare timeout.
fn limit_secs() -> u64 {
    std::env::var("NETSTACK_LIMIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(420)
}

/// All four connections of one cell: IPv4/IPv6 × active/passive, each `bytes()` both ways.
fn run_cell(cell: Cell, base_seed: u64) {
    run_cell_len(cell, base_seed, bytes())
}

/// Per-direction size of the 20 % cells in the default run: 16 MiB unless `NETSTACK_BYTES`
/// says otherwise. Why not 64 MiB: a 64 MiB connection at 20 % loss each way takes 60–100 s
/// (up to 3 min under load: the kernel's own sender crawls when its RTO sits at the 1 s cap),
/// and the four cells would add ~3 min to `cargo test -p chimney-netstack`; the
/// `matrix_loss20_*_64mib` variants run the full 64 MiB with `--ignored`.
fn loss20_bytes() -> u64 {
    match std::env::var("NETSTACK_BYTES") {
        Ok(_) => bytes(),
        Err(_) => 16 * MIB,
    }
}

fn run_cell_len(cell: Cell, base_seed: u64, len: u64) {
    let only = std::env::var("NETSTACK_CELL").ok();
    let seed = seed_from_env(base_seed);
    let mut threads = vec![];
    for (i, (v6, active)) in [(false, true), (false, false), (true, true), (true, false)]
        .into_iter()
        .enumerate()
    {
        let name = format!(
            "{}-{}-{}",
            cell.name(),
            if v6 { "v6" } else { "v4" },
            if active { "active" } else { "passive" }
        );
        if only
            .as_deref()
            .is_some_and(|o| o != name && o != cell.name())
        {
            continue;
        }
        // Each connection's seed is printed; NETSTACK_SEED + NETSTACK_CELL re-runs exactly it.
        let s = if only.as_deref() == Some(name.as_str()) {
            seed
        } else {
            seed.wrapping_add(i as u64)
        };
        // The four connections of a cell run at once, each in its own namespace: lossy cells
        // mostly wait on timers, so this keeps the wall time down on two cores.
        threads.push(std::thread::spawn(move || {
            transfer(cell, v6, active, s, len)
        }));
    }
    let mut failed = vec![];
    for t in threads {
        if let Err(e) = t.join() {
            failed.push(e);
        }
    }
    if let Some(e) = failed.pop() {
        std::panic::resume_unwind(e);
    }
}

macro_rules! cells {
    ($($name:ident: $loss:expr, $reorder:expr, $dup:expr, $corrupt:expr, $seed:expr;)*) => {$(
        #[test]
        fn $name() {
            run_cell(Cell { loss: $loss, reorder: $reorder, dup: $dup, corrupt: $corrupt }, $seed);
        }
    )*};
}

cells! {
    matrix_loss0_plain: 0, false, false, false, 0x1000;
    matrix_loss0_reorder: 0, true, false, false, 0x1010;
    matrix_loss0_dup: 0, false, true, false, 0x1020;
    matrix_loss0_reorder_dup: 0, true, true, false, 0x1030;
    matrix_loss1_plain: 1, false, false, false, 0x1100;
    matrix_loss1_reorder: 1, true, false, false, 0x1110;
    matrix_loss1_dup: 1, false, true, false, 0x1120;
    matrix_loss1_reorder_dup: 1, true, true, false, 0x1130;
    matrix_loss5_plain: 5, false, false, false, 0x1500;
    matrix_loss5_reorder: 5, true, false, false, 0x1510;
    matrix_loss5_dup: 5, false, true, false, 0x1520;
    matrix_loss5_reorder_dup: 5, true, true, false, 0x1530;
    corruption_1pct: 0, false, false, true, 0x3000;
}

// 20 % loss: back in the default run since the stall was found (docs/netstack.md, "The 20 %
// stall": orphaned kernel peer, RTO backoff cap, kernel neighbor resolution), at 16 MiB each
// way (`loss20_bytes`); the 64 MiB variants are the full size, run with --ignored.
macro_rules! loss20_cells {
    ($($name:ident, $full:ident: $reorder:expr, $dup:expr, $seed:expr;)*) => {$(
        #[test]
        fn $name() {
            let cell = Cell { loss: 20, reorder: $reorder, dup: $dup, corrupt: false };
            run_cell_len(cell, $seed, loss20_bytes());
        }

        #[test]
        #[ignore = "64 MiB at 20 % loss: 1-3 min per cell; the default run uses 16 MiB"]
        fn $full() {
            let cell = Cell { loss: 20, reorder: $reorder, dup: $dup, corrupt: false };
            run_cell_len(cell, $seed, bytes());
        }
    )*};
}

loss20_cells! {
    matrix_loss20_plain, matrix_loss20_plain_64mib: false, false, 0x2000;
    matrix_loss20_reorder, matrix_loss20_reorder_64mib: true, false, 0x2010;
    matrix_loss20_dup, matrix_loss20_dup_64mib: false, true, 0x2020;
    matrix_loss20_reorder_dup, matrix_loss20_reorder_dup_64mib: true, true, 0x2030;
}
