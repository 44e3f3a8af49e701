//! Item 3, the control plane: initiate and terminate round trips for one connection
//! (neighbor → path → TCP, p50/p99), bulk offload rate for many TCP objects, and the
//! device's resident memory per idle offloaded connection.
//!
//! The objects are synthetic (harness `objects.rs` values, C-035..C-040) and idle: no
//! keepalive, nothing in flight, and the neighbor's MAC is one the kernel peer does not
//! own, so no frame of theirs reaches a socket and nothing resets them while memory is read.
//! The device takes at most 4 MiB and 65,536 blocks per request (ring-abi.md §NEGOTIATE), so
//! a "tree of 100k" is offloaded as consecutive full trees, each neighbor → path → as many
//! TCP blocks as fit; the rate counts all of them over the time of all requests.

use std::time::{Duration, Instant};

use chimney_abi::{
    CompletionBody, DeviceHandle, NdisStatus, ObjectState, Request, RequestBody, TcpState, Tree,
    TreeBuilder, TIMEOUT_NOT_RUNNING,
};
use chimney_harness::objects::OffloadSet;

use crate::error::{BenchError, Result};
use crate::progress::Progress;
use crate::rig::{Rig, RigOptions};
use crate::sys;

/// A MAC no interface in the namespace has (locally administered).
const NOBODY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0xe7];

/// Idle TCP object number `i`: 4-tuple unique over 64,000 local ports × remote ports.
fn idle_tcp(template: &TcpState, i: usize) -> TcpState {
    let mut t = *template;
    t.konst.local_port = 1024 + (i % 64_000) as u16;
    t.konst.remote_port = 1 + (i / 64_000) as u16;
    t.cached.flags = 0; // no keepalive, no Nagle
    let d = &mut t.delegated;
    d.snd_nxt = d.snd_una;
    d.snd_max = d.snd_una;
    d.keepalive.timeout_delta = TIMEOUT_NOT_RUNNING;
    d.retransmit.timeout_delta = TIMEOUT_NOT_RUNNING;
    t
}

fn objects() -> OffloadSet {
    let mut set = OffloadSet::foundation(0x8e_4c4, 1, NOBODY_MAC);
    set.paths.truncate(1); // IPv4 only
    set
}

/// Initiate tree neighbor → path → TCP objects `first..first + n`.
fn tree(set: &OffloadSet, first: usize, n: usize) -> Tree<chimney_abi::InitiateBlock> {
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(set.neighbor));
    let p = b.new_dependent(0, 2, ObjectState::Path(set.paths[0]));
    for i in first..first + n {
        b.new_dependent(
            p,
            3 + i as u64,
            ObjectState::Tcp(idle_tcp(&set.tcp[0].1, i)),
        );
    }
    b.build()
}

fn initiate(rig: &mut Rig, t: Tree<chimney_abi::InitiateBlock>) -> Result<Vec<DeviceHandle>> {
    let n = t.blocks.len();
    let c = rig.session.call(RequestBody::Initiate(t))?;
    let CompletionBody::Initiate(r) = &c.body else {
        return Err(BenchError::Unexpected {
            what: "initiate".into(),
            detail: format!("{:?}", c.status),
        });
    };
    if r.len() != n {
        return Err(BenchError::Unexpected {
            what: "initiate".into(),
            detail: format!("{} results for {n} blocks, status {:?}", r.len(), c.status),
        });
    }
    r.iter()
        .enumerate()
        .map(|(i, b)| {
            b.handle
                .filter(|_| b.status == NdisStatus::SUCCESS)
                .ok_or_else(|| BenchError::Unexpected {
                    what: "initiate".into(),
                    detail: format!("block {i} of {n}: {:?}", b.status),
                })
        })
        .collect()
}

/// Initiate and terminate latency in microseconds, `rounds` times each.
pub struct Latency {
    pub initiate_us: Vec<f64>,
    pub terminate_us: Vec<f64>,
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn round_trips(opts: &RigOptions, rounds: usize, p: &Progress) -> Result<Latency> {
    let mut rig = Rig::start(opts)?;
    let set = objects();
    let mut lat = Latency {
        initiate_us: Vec::with_capacity(rounds),
        terminate_us: Vec::with_capacity(rounds),
    };
    for k in 0..rounds {
        let t = tree(&set, k % 64_000, 1);
        let shape = t.clone();
        let t0 = Instant::now();
        let handles = initiate(&mut rig, t)?;
        lat.initiate_us.push(t0.elapsed().as_secs_f64() * 1e6);
        let term = chimney_harness::objects::terminate_all(&shape, &handles);
        let t1 = Instant::now();
        let c = rig.session.call(RequestBody::Terminate(term))?;
        lat.terminate_us.push(t1.elapsed().as_secs_f64() * 1e6);
        if c.status != NdisStatus::SUCCESS {
            return Err(BenchError::Unexpected {
                what: "terminate".into(),
                detail: format!("{:?}", c.status),
            });
        }
        if k % 50 == 0 {
            p.set(format!("control round trips {k}/{rounds}"));
        }
        rig.drain_events()?;
    }
    lat.initiate_us.sort_by(f64::total_cmp);
    lat.terminate_us.sort_by(f64::total_cmp);
    Ok(lat)
}

/// Most TCP blocks per initiate request within the device's 4 MiB / 65,536-block limits.
fn blocks_per_tree(set: &OffloadSet) -> usize {
    let size = |n: usize| {
        Request {
            request_id: 1,
            body: RequestBody::Initiate(tree(set, 0, n)),
        }
        .encode()
        .len()
    };
    let one = size(1);
    let per = size(2) - one;
    let by_bytes = ((4usize << 20) - one - 4096) / per.max(1);
    by_bytes.min(65_536 - 2)
}

/// Result of one bulk run.
pub struct Bulk {
    pub wanted: usize,
    pub offloaded: usize,
    pub trees: usize,
    pub per_tree: usize,
    /// Time spent in initiate requests.
    pub busy: Duration,
    pub rss_before: u64,
    pub rss_after: u64,
    pub device_cpu: Duration,
    /// Why fewer than `wanted` were offloaded, if so.
    pub stopped: Option<String>,
}

impl Bulk {
    pub fn rate(&self) -> f64 {
        self.offloaded as f64 / self.busy.as_secs_f64().max(1e-9)
    }
    pub fn bytes_per_conn(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.offloaded.max(1) as f64
    }
}

/// Offload `n` idle connections in full trees; stop early past `budget` or when the device
/// grows beyond `max_rss` (the machine is shared), saying so.
pub fn bulk(
    opts: &RigOptions,
    n: usize,
    budget: Duration,
    max_rss: u64,
    p: &Progress,
) -> Result<Bulk> {
    let mut o = opts.clone();
    o.device_args.extend([
        "--max-tcp".to_string(),
        n.to_string(),
        "--max-neighbors".to_string(),
        "65536".to_string(),
        "--max-paths".to_string(),
        "65536".to_string(),
    ]);
    let mut rig = Rig::start(&o)?;
    let pid = rig.device_pid();
    let set = objects();
    let per_tree = blocks_per_tree(&set).min(n);
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = sys::process_rss(pid)?;
    let cpu_before = sys::process_cpu(pid)?;
    let mut done = 0;
    let mut trees = 0;
    let mut busy = Duration::ZERO;
    let mut stopped = None;
    let start = Instant::now();
    while done < n {
        let k = per_tree.min(n - done);
        let t = tree(&set, done, k);
        let t0 = Instant::now();
        initiate(&mut rig, t)?;
        busy += t0.elapsed();
        done += k;
        trees += 1;
        rig.drain_events()?;
        let rss = sys::process_rss(pid)?;
        p.set(format!(
            "bulk offload {done}/{n} ({:.0}/s), device RSS {} MiB",
            done as f64 / busy.as_secs_f64().max(1e-9),
            rss >> 20
        ));
        if done < n && start.elapsed() > budget {
            stopped = Some(format!("time budget of {budget:?} reached after {done}"));
            break;
        }
        if done < n && rss > max_rss {
            stopped = Some(format!(
                "device RSS {} MiB above the {} MiB cap after {done}",
                rss >> 20,
                max_rss >> 20
            ));
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let events = rig.drain_events()?;
    if !events.is_empty() {
        return Err(BenchError::Unexpected {
            what: "idle connections".into(),
            detail: format!("{} events, first {:?}", events.len(), events[0]),
        });
    }
    Ok(Bulk {
        wanted: n,
        offloaded: done,
        trees,
        per_tree,
        busy,
        rss_before,
        rss_after: sys::process_rss(pid)?,
        device_cpu: sys::process_cpu(pid)?.saturating_sub(cpu_before),
        stopped,
    })
}

/// The control ring's floor: NEGOTIATE round trips (no state touched), microseconds, sorted.
pub fn negotiate_round_trips(opts: &RigOptions, rounds: usize) -> Result<Vec<f64>> {
    let mut rig = Rig::start(opts)?;
    let mut v = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        rig.session.negotiate()?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}
