//! Runs one scenario against a fresh test machine (namespace + TAP + device + VMM) or an
//! attached device, step by step, with the conformance monitor watching every completion
//! and event. The harness keeps a model of every object it offloaded (the state it handed
//! down and every cached update since) and judges what the device returns against it.
//!
//! Today the state-manipulation operations and their events travel through the
//! guest-driver's `ControlChannel` (`ControlSession`); when the NDIS model (issue 5,
//! `harness/src/ndis/`) lands, the same steps go through the miniport's handler tables.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chimney_abi::event::{offload_event, tcp_event};
use chimney_abi::{
    Block, CachedState, Completion, CompletionBody, DeviceHandle, Event, EventClass, InitiateBlock,
    IpVersion, Layer, NdisStatus, ObjectState, OffloadStateType, Reason, RefBlock, Request,
    RequestBody, StateClass, TcpConnectionState, TerminateBlock, Tree, UpdateBlock,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::conformance::{Known, Monitor, RefOp, Role, Violation};
use super::format::{
    BadRequestKind, BlockSpec, CachedFields, ClassName, EventKind, Family, ItemId, Kind, Scenario,
    Selector, StatusName, Step,
};
use crate::control_session::ControlSession;
use crate::frontend::{Vmm, VmmConfig};
use crate::objects::OffloadSet;
use crate::testbed::{TestBed, TestBedConfig};

/// How scenarios are run (from the command line).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Master seed: each scenario's seed is derived from it and its name.
    pub seed: u64,
    /// The device executable (default: found as `device_process::device_binary` does).
    pub device: Option<PathBuf>,
    /// Attach to this already running device instead of starting one per scenario.
    pub device_socket: Option<PathBuf>,
    /// Write `<name>.pcap` (the device's queue-pair-0 wire capture) here.
    pub pcap_dir: Option<PathBuf>,
    /// Write one SVG time-sequence plot per TCP connection of the capture here.
    pub plots_dir: Option<PathBuf>,
    pub queue_size: u16,
    /// Bound for one expected event.
    pub event_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: 0,
            device: None,
            device_socket: None,
            pcap_dir: None,
            plots_dir: None,
            queue_size: 256,
            event_timeout: Duration::from_secs(10),
        }
    }
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Passed(String),
    Failed(String),
    /// The step needs machinery this harness/device build does not have.
    Unsupported(String),
    NotRun,
}

#[derive(Debug, Clone)]
pub struct StepReport {
    pub index: usize,
    pub name: &'static str,
    pub line: Option<usize>,
    pub outcome: StepOutcome,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
    Unsupported,
}

/// Everything known about one scenario run.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub name: String,
    pub file: PathBuf,
    pub summary: String,
    pub verifies: Vec<ItemId>,
    pub seed: u64,
    pub outcome: Outcome,
    /// Setup or teardown problem (device did not start, …).
    pub error: Option<String>,
    pub steps: Vec<StepReport>,
    pub violations: Vec<Violation>,
    pub duration: Duration,
    pub pcap: Option<PathBuf>,
    pub plots: Vec<PathBuf>,
    /// Moments (wall clock, since the Unix epoch, like pcap timestamps) of offload /
    /// terminate completions, for the plots.
    pub marks: Vec<(Duration, String)>,
    /// The command that replays this scenario.
    pub replay: String,
}

impl ScenarioReport {
    /// A newcomer-readable account of why it failed (empty when it passed).
    pub fn failure_text(&self) -> String {
        let mut out = String::new();
        if let Some(e) = &self.error {
            out.push_str(&format!("setup: {e}\n"));
        }
        for s in &self.steps {
            if let StepOutcome::Failed(why) = &s.outcome {
                out.push_str(&format!(
                    "step {} `{}`{}: {why}\n",
                    s.index + 1,
                    s.name,
                    s.line.map(|l| format!(" (line {l})")).unwrap_or_default()
                ));
            }
        }
        for v in &self.violations {
            out.push_str(&format!("conformance: {v}\n"));
        }
        out
    }

    pub fn unsupported_text(&self) -> Option<String> {
        self.steps.iter().find_map(|s| match &s.outcome {
            StepOutcome::Unsupported(why) => {
                Some(format!("step {} `{}`: {why}", s.index + 1, s.name))
            }
            _ => None,
        })
    }
}

/// Now as a pcap timestamp would say it.
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Derive a scenario's seed from the master seed and its name (stable across runs).
pub fn scenario_seed(master: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the master seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ master;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const DATA_RINGS: &str = "unsupported by this device build and harness setup: data on an \
     offloaded connection needs a host-stack connection (`open`, then `offload_connection`) \
     and a data pair (`[device] queue_pairs = 3`, `driver = \"ndis\"`); objects from \
     `offload_set`/`offload` have no peer socket to move data with";

/// The step kinds this harness/device build cannot run at all.
fn unsupported_reason(step: &Step) -> Option<String> {
    match step {
        Step::InjectEvent { .. } => Some(
            "unsupported by this harness build: `inject_event` needs a way to make the \
             device raise an event on demand; the device raises events by policy instead \
             (`[device] policy`: `[[event]]` retrieve/send_backlog after N bytes, `[adapter]` \
             OFFLOAD_PAUSE / UPLOAD_ALL / OFFLOAD_RESUME; docs/vendor-guide.md)"
                .into(),
        ),
        _ => None,
    }
}

/// Why a scenario cannot run to the end with this harness/device build, judged from the
/// file alone (a `[device] policy`, or a step that needs the data path), or None.
pub fn pending_reason(sc: &Scenario) -> Option<String> {
    // Data on a connection while it is offloaded needs the data rings.
    let mut offloaded = std::collections::HashSet::new();
    for step in &sc.steps {
        if let Some(r) = unsupported_reason(step) {
            return Some(r);
        }
        match step {
            Step::OffloadConnection { conn, .. } => {
                offloaded.insert(conn.clone());
            }
            Step::Terminate { objects, .. } => {
                if objects.0.iter().any(|o| o == "all") {
                    offloaded.clear();
                }
                for o in &objects.0 {
                    offloaded.remove(o);
                }
            }
            Step::Send { conn, .. }
            | Step::Disconnect { conn, .. }
            | Step::Receive { conn, .. }
                if offloaded.contains(conn)
                    && (sc.driver == super::format::DriverKind::Ring
                        || sc.device.queue_pairs.unwrap_or(2) < 3) =>
            {
                return Some(DATA_RINGS.into());
            }
            _ => {}
        }
    }
    None
}

/// One object the harness offloaded.
#[derive(Debug, Clone)]
struct Obj {
    name: String,
    state: ObjectState,
    handle: DeviceHandle,
    host_context: u64,
    parent: Option<usize>,
    live: bool,
}

impl Obj {
    fn layer(&self) -> Layer {
        self.state.layer()
    }
    fn ip(&self) -> IpVersion {
        match &self.state {
            ObjectState::Path(p) => p.konst.ip_version(),
            _ => IpVersion::V4,
        }
    }
    fn ty(&self, class: ClassName) -> OffloadStateType {
        let c = match class {
            ClassName::All => return self.state.state_type(),
            ClassName::Const => StateClass::Const,
            ClassName::Cached => StateClass::Cached,
            ClassName::Delegated => StateClass::Delegated,
        };
        OffloadStateType::of(self.layer(), self.ip(), c)
    }
}

/// The harness's side of one scenario: the session, the model, the monitor.
struct World<'a> {
    link: super::link::Link<'a>,
    /// The VMM and namespace, for the host stack (None when attached to a device).
    vmm: &'a mut Vmm,
    ns: Option<&'a chimney_wire::NetNs>,
    host: Option<super::host::HostStack>,
    /// A data pair is attached to the miniport (NDIS driver, `[device] queue_pairs >= 3`).
    data_pair: bool,
    /// TCP objects that are host-stack connections handed over by `offload_connection`.
    host_offloaded: std::collections::HashSet<String>,
    /// Every TCP object that was a host-stack connection: its delegated state moves on in
    /// the device (data, close), so a terminate is not compared with the offload-time model.
    host_conns: std::collections::HashSet<String>,
    /// Offloaded data moved already (an `impair` step after that cannot be honoured).
    offloaded_data_moved: bool,
    /// Per connection: the bytes and NBL ids of sends not waited for (`wait = false`),
    /// judged at its terminate (C-115).
    unwaited: HashMap<String, (Vec<u8>, Vec<u64>)>,
    /// Connections whose peer went silent, and the NBLs sent on them since: no ACK can
    /// reach the device, so none may complete with SUCCESS (C-142).
    silent: std::collections::HashSet<String>,
    silent_sends: Vec<u64>,
    /// OFFLOAD_PAUSE or UPLOAD_ALL seen and no OFFLOAD_RESUME since.
    paused: bool,
    /// Per offloaded host connection: the sequence number after the last byte handed to
    /// the miniport (SndUna at offload + every byte sent through it).
    seq_end: HashMap<String, u32>,
    queue_size: u16,
    seed: u64,
    objs: Vec<Obj>,
    monitor: Monitor,
    events: VecDeque<Event>,
    template: OffloadSet,
    rng: ChaCha8Rng,
    next_context: u64,
    event_timeout: Duration,
    marks: Vec<(Duration, String)>,
}

type StepResult = Result<String, String>;

fn cite(items: &[ItemId]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        let v: Vec<String> = items.iter().map(|i| i.to_string()).collect();
        format!(" [checks {}]", v.join(", "))
    }
}

impl World<'_> {
    /// The live object of that name, else the most recent one (a terminated object's name
    /// still names it, e.g. for a stale-handle check).
    fn find(&self, name: &str) -> Result<usize, String> {
        self.objs
            .iter()
            .rposition(|o| o.name == name && o.live)
            .or_else(|| self.objs.iter().rposition(|o| o.name == name))
            .ok_or_else(|| format!("no object named `{name}` was offloaded by an earlier step"))
    }

    /// Feed events through the monitor into the queue.
    fn take_events(&mut self, evs: Vec<Event>) {
        for (item, seen) in self.link.host_checks() {
            self.monitor.violate(item, seen);
        }
        for e in evs {
            self.monitor.event(&e);
            // The host answered a reachability query: the device takes its HRD as the
            // neighbor's cached value (C-226), so the model does too.
            if e.class == EventClass::OffloadEvent
                && e.code == offload_event::NEIGHBOR_REACHABILITY_QUERY
                && self.link.is_ndis()
            {
                if let Some(o) = e
                    .handle
                    .and_then(|h| self.objs.iter_mut().rev().find(|o| o.handle == h && o.live))
                {
                    if let ObjectState::Neighbor(n) = &mut o.state {
                        n.cached.host_reachability_delta = e.info;
                    }
                }
            }
            if e.class == EventClass::StatusIndication {
                if e.status == NdisStatus::OFFLOAD_PAUSE || e.status == NdisStatus::UPLOAD_ALL {
                    self.paused = true;
                } else if e.status == NdisStatus::OFFLOAD_RESUME {
                    self.paused = false;
                }
            }
            self.events.push_back(e);
        }
    }

    /// Collect events that have arrived (waiting up to `wait` for one).
    fn poll_events(&mut self, wait: Duration) -> Result<usize, String> {
        let objs = &self.objs;
        let handle_of = |ctx: u64| {
            objs.iter()
                .rev()
                .find(|o| o.host_context == ctx)
                .map(|o| o.handle.0)
        };
        let evs = self
            .link
            .events(wait, &handle_of)
            .map_err(|e| format!("reading events: {e}"))?;
        let n = evs.len();
        self.take_events(evs);
        Ok(n)
    }

    fn drain_events(&mut self) -> Result<(), String> {
        self.poll_events(Duration::ZERO).map(|_| ())
    }

    fn call(&mut self, what: &str, body: RequestBody) -> Result<Completion, String> {
        self.call_returning(what, body).map(|(c, _)| c)
    }

    /// A call, with the data a terminate handed back per block (NDIS driver).
    fn call_returning(
        &mut self,
        what: &str,
        body: RequestBody,
    ) -> Result<(Completion, Vec<super::link::Returned>), String> {
        let objs = &self.objs;
        let handle_of = |ctx: u64| {
            objs.iter()
                .rev()
                .find(|o| o.host_context == ctx)
                .map(|o| o.handle.0)
        };
        let called = self
            .link
            .call(body, &handle_of)
            .map_err(|e| format!("{what}: {e}"))?;
        if let Some(kind) = called.synchronous {
            self.monitor.violate(
                super::link::async_item(kind),
                format!(
                    "the {kind:?} handler completed the tree before returning (it must only \
                     record it; completion comes later through NDIS)"
                ),
            );
        }
        for seen in called.host_fields_changed {
            self.monitor.violate(
                30,
                format!("the miniport changed the host's fields of a block list: {seen}"),
            );
        }
        // Events that came before the completion are judged before it takes effect.
        self.take_events(called.events);
        for r in &called.returned {
            if let Some(st) = r.return_status.filter(|s| *s != NdisStatus::SUCCESS) {
                self.monitor.violate(
                    175,
                    format!(
                        "the receive-return handler returned {st} for the BufferedData of \
                         terminate block {}",
                        r.block
                    ),
                );
            }
        }
        Ok((called.completion, called.returned))
    }

    fn is_ancestor(&self, anc: usize, mut i: usize) -> bool {
        while let Some(p) = self.objs[i].parent {
            if p == anc {
                return true;
            }
            i = p;
        }
        false
    }

    /// Resolve a selector to live objects, in offload order.
    fn select(&self, sel: &Selector) -> Result<Vec<usize>, String> {
        let mut out = Vec::new();
        for pat in &sel.0 {
            let before = out.len();
            if pat == "all" {
                out.extend((0..self.objs.len()).filter(|i| self.objs[*i].live));
            } else if let Some(anc) = pat.strip_prefix("dependents:") {
                let a = self.find(anc)?;
                out.extend((0..self.objs.len()).filter(|i| {
                    self.objs[*i].live
                        && self.objs[*i].layer() == Layer::Tcp
                        && self.is_ancestor(a, *i)
                }));
            } else if pat.contains(['*', '?']) {
                out.extend((0..self.objs.len()).filter(|i| {
                    self.objs[*i].live && super::format::glob_match(pat, &self.objs[*i].name)
                }));
            } else {
                out.push(self.find(pat)?);
            }
            if out.len() == before && pat != "all" && !pat.starts_with("dependents:") {
                return Err(format!("`{pat}` selects no object"));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// A reference tree over `sel` that keeps the hierarchy: each selected object under
    /// its parent (a placeholder when the parent is not selected), siblings chained.
    /// Returns the blocks' objects (None = placeholder).
    fn reference_tree<B>(
        &self,
        sel: &[usize],
        mut body: impl FnMut(Option<usize>) -> (OffloadStateType, B),
    ) -> (Tree<B>, Vec<Option<usize>>) {
        // Include every ancestor of a selected object (as a placeholder unless selected).
        let mut nodes: Vec<usize> = Vec::new();
        for &i in sel {
            let mut chain = vec![i];
            let mut j = i;
            while let Some(p) = self.objs[j].parent {
                chain.push(p);
                j = p;
            }
            nodes.extend(chain);
        }
        nodes.sort();
        nodes.dedup();
        let selected: std::collections::HashSet<usize> = sel.iter().copied().collect();
        let children = |p: Option<usize>| -> Vec<usize> {
            nodes
                .iter()
                .copied()
                .filter(|n| self.objs[*n].parent == p)
                .collect()
        };
        // Roots: nodes without a parent in `nodes`, all of the top layer present.
        let roots: Vec<usize> = nodes
            .iter()
            .copied()
            .filter(|n| self.objs[*n].parent.is_none_or(|p| !nodes.contains(&p)))
            .collect();
        let mut blocks: Vec<Block<B>> = Vec::new();
        let mut refs = Vec::new();
        // Depth-first emission; returns the index of the first block of the list.
        #[allow(clippy::too_many_arguments)]
        fn emit<B>(
            w: &World<'_>,
            list: &[usize],
            selected: &std::collections::HashSet<usize>,
            children: &dyn Fn(Option<usize>) -> Vec<usize>,
            body: &mut dyn FnMut(Option<usize>) -> (OffloadStateType, B),
            blocks: &mut Vec<Block<B>>,
            refs: &mut Vec<Option<usize>>,
        ) -> Option<u32> {
            let mut first = None;
            let mut prev: Option<usize> = None;
            for &n in list {
                let who = selected.contains(&n).then_some(n);
                let (ty, b) = if who.is_some() {
                    body(who)
                } else {
                    let (_, b) = body(None);
                    (w.objs[n].state.state_type(), b)
                };
                let idx = blocks.len();
                blocks.push(Block {
                    state_type: ty,
                    next: None,
                    dependent: None,
                    host_context: w.objs[n].host_context,
                    body: b,
                });
                refs.push(who);
                if let Some(p) = prev {
                    blocks[p].next = Some(idx as u32);
                }
                first.get_or_insert(idx as u32);
                prev = Some(idx);
                let kids = children(Some(n));
                if !kids.is_empty() {
                    let d = emit(w, &kids, selected, children, body, blocks, refs);
                    blocks[idx].dependent = d;
                }
            }
            first
        }
        emit(
            self,
            &roots,
            &selected,
            &children,
            &mut body,
            &mut blocks,
            &mut refs,
        );
        (Tree { blocks }, refs)
    }

    fn fresh_context(&mut self) -> u64 {
        self.next_context += 1;
        self.next_context
    }

    fn register(
        &mut self,
        name: String,
        state: ObjectState,
        handle: DeviceHandle,
        ctx: u64,
        parent: Option<usize>,
    ) {
        let tcp_state = match &state {
            ObjectState::Tcp(t) => Some(t.delegated.state),
            _ => None,
        };
        self.monitor.known.insert(
            handle.0,
            Known {
                layer: state.layer(),
                host_context: ctx,
                tcp_state,
            },
        );
        self.objs.push(Obj {
            name,
            state,
            handle,
            host_context: ctx,
            parent,
            live: true,
        });
    }

    fn name_free(&self, name: &str) -> Result<(), String> {
        if self.objs.iter().any(|o| o.name == name && o.live) {
            return Err(format!(
                "the name `{name}` is already used by a live object"
            ));
        }
        Ok(())
    }
}

fn check_status(
    what: &str,
    expected: Option<StatusName>,
    seen: NdisStatus,
    items: &[ItemId],
) -> Result<(), String> {
    let want = expected.map_or(NdisStatus::SUCCESS, |s| s.0);
    if seen != want {
        return Err(format!(
            "{what}: expected status {want}, seen {seen}{}",
            cite(items)
        ));
    }
    Ok(())
}

fn error_of(c: &Completion) -> Option<&chimney_abi::ErrorInfo> {
    match &c.body {
        CompletionBody::Error(e) => Some(e),
        _ => None,
    }
}

/// An ERROR completion where a tree result was expected (or the other way round).
fn expect_error_or_not(
    what: &str,
    c: &Completion,
    expect_error: Option<Reason>,
    items: &[ItemId],
) -> Result<bool, String> {
    match (error_of(c), expect_error) {
        (Some(e), Some(r)) if e.reason == r => Ok(true),
        (Some(e), Some(r)) => Err(format!(
            "{what}: expected an ERROR completion with reason {r:?}, seen reason {:?} (field \
             `{}`, block {:?}){}",
            e.reason,
            e.field,
            e.block,
            cite(items)
        )),
        (None, Some(r)) => Err(format!(
            "{what}: expected an ERROR completion with reason {r:?}, seen status {}{}",
            c.status,
            cite(items)
        )),
        (Some(e), None) => Err(format!(
            "{what}: expected a completion, seen ERROR reason {:?} (field `{}`, block {:?}){}",
            e.reason,
            e.field,
            e.block,
            cite(items)
        )),
        (None, None) => Ok(false),
    }
}

fn tcp_state_of(n: super::format::TcpStateName) -> TcpConnectionState {
    TcpConnectionState::from_u32(n as u32).unwrap_or(TcpConnectionState::Established)
}

/// Build an object for a `new` block from the seeded template.
fn new_object(w: &mut World<'_>, spec: &BlockSpec, kind: Kind) -> Result<ObjectState, String> {
    Ok(match kind {
        Kind::Neighbor => {
            let mut n = w.template.neighbor;
            if let Some(v) = spec.vlan_id {
                n.konst.vlan_id = v;
            }
            if let Some(m) = &spec.dl_source_address {
                let mac = crate::testbed::parse_mac(m).ok_or("bad MAC")?;
                n.konst.dl_source_address[..6].copy_from_slice(&mac);
            }
            ObjectState::Neighbor(n)
        }
        Kind::Path4 | Kind::Path6 => {
            let mut p = w.template.paths[usize::from(kind == Kind::Path6)];
            if let Some(m) = spec.path_mtu {
                p.cached.path_mtu = m;
            }
            ObjectState::Path(p)
        }
        Kind::Tcp => {
            let i = w.rng.gen_range(0..w.template.tcp.len());
            let mut t = w.template.tcp[i].1;
            t.konst.local_port = spec
                .local_port
                .unwrap_or_else(|| 20_000 + (w.next_context % 40_000) as u16);
            if let Some(s) = spec.state {
                t.delegated.state = tcp_state_of(s);
            }
            if let Some(v) = spec.initial_rcv_wnd {
                t.cached.initial_rcv_wnd = v;
            }
            if w.data_pair {
                // An engine refuses data in flight without its send data (see offload_set).
                t.delegated.snd_nxt = t.delegated.snd_una;
                t.delegated.snd_max = t.delegated.snd_una;
            }
            ObjectState::Tcp(t)
        }
    })
}

fn kind_type(k: Kind) -> OffloadStateType {
    match k {
        Kind::Neighbor => OffloadStateType::Neighbor,
        Kind::Path4 => OffloadStateType::Ip4,
        Kind::Path6 => OffloadStateType::Ip6,
        Kind::Tcp => OffloadStateType::Tcp,
    }
}

/// Dependent lists (block indices) of each block: its dependent and that one's next chain.
fn dependents_of<B>(tree: &Tree<B>) -> Vec<Vec<usize>> {
    tree.blocks
        .iter()
        .map(|b| {
            let mut v = Vec::new();
            let mut cur = b.dependent;
            while let Some(d) = cur {
                let d = d as usize;
                if d >= tree.blocks.len() || v.contains(&d) {
                    break;
                }
                v.push(d);
                cur = tree.blocks[d].next;
            }
            v
        })
        .collect()
}

/// Send an initiate tree, run the conformance checks, register what was offloaded.
/// `names[i]` is the name of a new block's object; `parents[i]` the model parent.
fn initiate(
    w: &mut World<'_>,
    tree: Tree<InitiateBlock>,
    roles: Vec<Role>,
    names: Vec<Option<String>>,
    parents: Vec<Option<usize>>,
) -> Result<(NdisStatus, Vec<NdisStatus>), String> {
    let deps = dependents_of(&tree);
    let c = w.call("initiate", RequestBody::Initiate(tree.clone()))?;
    let results = match &c.body {
        CompletionBody::Initiate(r) => r.clone(),
        CompletionBody::Error(e) => {
            return Err(format!(
                "initiate: the device refused the tree with ERROR {:?} (field `{}`, block {:?})",
                e.reason, e.field, e.block
            ))
        }
        other => return Err(format!("initiate: unexpected completion {other:?}")),
    };
    w.monitor.initiate(&roles, &deps, c.status, &results);
    w.marks.push((wall_clock(), "offload".into()));
    // Model index of each block, filled as new objects register (parents come first:
    // trees are emitted parent-before-child).
    let mut model_of: Vec<Option<usize>> = vec![None; tree.blocks.len()];
    for (i, b) in tree.blocks.iter().enumerate() {
        if let InitiateBlock::Linker(h) = b.body {
            model_of[i] = w.objs.iter().position(|o| o.handle == h && o.live);
        }
    }
    // Parent block of each block.
    let mut parent_block = vec![None; tree.blocks.len()];
    for (p, d) in deps.iter().enumerate() {
        for c in d {
            parent_block[*c] = Some(p);
        }
    }
    for i in 0..tree.blocks.len() {
        let Some(r) = results.get(i) else { break };
        if let (InitiateBlock::New(state), Some(h)) = (&tree.blocks[i].body, r.handle) {
            if r.status == NdisStatus::SUCCESS || r.status == NdisStatus::OFFLOAD_PARTIAL_SUCCESS {
                let parent = parent_block[i].and_then(|p| model_of[p]).or(parents[i]);
                let name = names[i].clone().unwrap_or_else(|| format!("block{i}"));
                w.register(name, *state, h, tree.blocks[i].host_context, parent);
                model_of[i] = Some(w.objs.len() - 1);
            }
        }
    }
    Ok((c.status, results.iter().map(|r| r.status).collect()))
}

fn step_offload_set(
    w: &mut World<'_>,
    connections: u32,
    family: Family,
    expect: Option<StatusName>,
    items: &[ItemId],
) -> StepResult {
    let n = connections as usize;
    let (keep4, keep6) = match family {
        Family::Ipv4 => (true, false),
        Family::Ipv6 => (false, true),
        Family::Both => (true, true),
    };
    let total = if family == Family::Both { n } else { 2 * n };
    let set = OffloadSet::foundation(w.template.seed, total, w.template.neighbor_mac());
    w.name_free("neighbor")?;
    let mut blocks: Vec<Block<InitiateBlock>> = Vec::new();
    let mut names = Vec::new();
    let nctx = w.fresh_context();
    blocks.push(block(
        OffloadStateType::Neighbor,
        nctx,
        InitiateBlock::New(ObjectState::Neighbor(set.neighbor)),
    ));
    names.push(Some("neighbor".to_string()));
    let mut path_block = [None, None];
    for (pi, keep) in [keep4, keep6].into_iter().enumerate() {
        if !keep {
            continue;
        }
        let name = if pi == 0 { "path4" } else { "path6" };
        w.name_free(name)?;
        let ctx = w.fresh_context();
        let idx = blocks.len();
        blocks.push(block(
            set.paths[pi].konst_type(),
            ctx,
            InitiateBlock::New(ObjectState::Path(set.paths[pi])),
        ));
        names.push(Some(name.to_string()));
        link_child(&mut blocks, 0, idx);
        path_block[pi] = Some(idx);
    }
    let mut k = 0;
    for (p, t) in &set.tcp {
        let Some(pb) = path_block[*p] else { continue };
        if k == n {
            break;
        }
        let name = format!("tcp{k}");
        w.name_free(&name)?;
        let ctx = w.fresh_context();
        let idx = blocks.len();
        let mut t = *t;
        if w.data_pair {
            // A device with a data path runs each connection in an engine, which refuses
            // data in flight without the send data behind it: nothing in flight.
            t.delegated.snd_nxt = t.delegated.snd_una;
            t.delegated.snd_max = t.delegated.snd_una;
        }
        blocks.push(block(
            OffloadStateType::Tcp,
            ctx,
            InitiateBlock::New(ObjectState::Tcp(t)),
        ));
        names.push(Some(name));
        link_child(&mut blocks, pb, idx);
        k += 1;
    }
    let count = blocks.len();
    let roles = vec![Role::New; count];
    let parents = vec![None; count];
    let (overall, statuses) = initiate(w, Tree { blocks }, roles, names, parents)?;
    check_status("offload_set", expect, overall, items)?;
    if expect.is_none() {
        if let Some((i, s)) = statuses
            .iter()
            .enumerate()
            .find(|(_, s)| **s != NdisStatus::SUCCESS)
        {
            return Err(format!(
                "offload_set: expected SUCCESS in every block, block {i} has {s}{}",
                cite(items)
            ));
        }
    }
    Ok(format!("{count} blocks, root {overall}"))
}

fn block<B>(state_type: OffloadStateType, host_context: u64, body: B) -> Block<B> {
    Block {
        state_type,
        next: None,
        dependent: None,
        host_context,
        body,
    }
}

/// Append `child` to `parent`'s dependent list (O(1) amortised would need a tail table;
/// trees here are at most a few thousand blocks, so walk).
fn link_child<B>(blocks: &mut [Block<B>], parent: usize, child: usize) {
    match blocks[parent].dependent {
        None => blocks[parent].dependent = Some(child as u32),
        Some(first) => {
            let mut cur = first as usize;
            while let Some(n) = blocks[cur].next {
                cur = n as usize;
            }
            blocks[cur].next = Some(child as u32);
        }
    }
}

trait KonstType {
    fn konst_type(&self) -> OffloadStateType;
}
impl KonstType for chimney_abi::PathState {
    fn konst_type(&self) -> OffloadStateType {
        match self.konst.ip_version() {
            IpVersion::V4 => OffloadStateType::Ip4,
            IpVersion::V6 => OffloadStateType::Ip6,
        }
    }
}

impl OffloadSet {
    /// The peer MAC this set was built with (DlDestinationAddress).
    fn neighbor_mac(&self) -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.neighbor.cached.dl_destination_address[..6]);
        m
    }
}

fn step_offload(
    w: &mut World<'_>,
    specs: &[BlockSpec],
    expect: Option<StatusName>,
    expect_blocks: &Option<Vec<StatusName>>,
    items: &[ItemId],
) -> StepResult {
    let mut blocks = Vec::new();
    let mut roles = Vec::new();
    let mut names = Vec::new();
    let mut parents = Vec::new();
    for spec in specs {
        let ctx = w.fresh_context();
        if let Some(kind) = spec.new {
            let name = spec.name.clone().unwrap_or_default();
            w.name_free(&name)?;
            let st = new_object(w, spec, kind)?;
            blocks.push(block(kind_type(kind), ctx, InitiateBlock::New(st)));
            roles.push(Role::New);
            names.push(Some(name));
        } else if let Some(target) = &spec.linker {
            let i = w.find(target)?;
            let o = &w.objs[i];
            blocks.push(block(
                o.state.state_type(),
                o.host_context,
                InitiateBlock::Linker(o.handle),
            ));
            roles.push(Role::Linker);
            names.push(None);
        } else if let Some(kind) = spec.placeholder {
            blocks.push(block(kind_type(kind), ctx, InitiateBlock::Placeholder));
            roles.push(Role::Placeholder);
            names.push(None);
        }
        parents.push(None);
    }
    for (b, spec) in specs.iter().enumerate() {
        blocks[b].dependent = spec.dependent;
        blocks[b].next = spec.next;
    }
    let (overall, statuses) = initiate(w, Tree { blocks }, roles, names, parents)?;
    if let Some(want) = expect_blocks {
        for (i, (want, seen)) in want.iter().zip(&statuses).enumerate() {
            if want.0 != *seen {
                return Err(format!(
                    "offload block {i}: expected status {}, seen {seen} (all blocks seen: {}){}",
                    want.0,
                    statuses
                        .iter()
                        .map(|s| format!("{s}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    cite(items)
                ));
            }
        }
    }
    if expect.is_some() || expect_blocks.is_none() {
        check_status("offload (root block)", expect, overall, items)?;
    }
    Ok(format!(
        "{} blocks: {}",
        statuses.len(),
        statuses
            .iter()
            .map(|s| s
                .name()
                .unwrap_or("?")
                .trim_start_matches("NDIS_STATUS_")
                .to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn step_query(
    w: &mut World<'_>,
    sel: &Selector,
    class: ClassName,
    expect: Option<StatusName>,
    compare: bool,
    items: &[ItemId],
) -> StepResult {
    let chosen = w.select(sel)?;
    let (tree, refs) = w.reference_tree(&chosen, |_| {
        (OffloadStateType::Neighbor, RefBlock::Placeholder)
    });
    // The shape is known; now the real types and handles.
    let tree = fix_ref_tree(w, tree, &refs, class);
    let n = tree.blocks.len();
    let c = w.call("query", RequestBody::Query(tree.clone()))?;
    expect_error_or_not("query", &c, None, items)?;
    let CompletionBody::Query(results) = &c.body else {
        return Err(format!("query: unexpected completion {:?}", c.body));
    };
    w.monitor.reference_op(RefOp::Query, n, c.status, results);
    check_status("query", expect, c.status, items)?;
    let mut compared = 0;
    for (b, r) in results.iter().enumerate() {
        let Some(Some(i)) = refs.get(b) else { continue };
        if r.status != NdisStatus::SUCCESS {
            if expect.is_none() {
                return Err(format!(
                    "query block {b} (`{}`): expected SUCCESS, seen {}{}",
                    w.objs[*i].name,
                    r.status,
                    cite(items)
                ));
            }
            continue;
        }
        let want = chimney_abi::QueriedState::select(tree.blocks[b].state_type, &w.objs[*i].state);
        w.monitor.queried(b, &want, &r.state);
        if compare && r.state.as_ref() != Some(&want) {
            return Err(format!(
                "query of `{}` (block {b}): expected {want:?}, seen {:?}{}",
                w.objs[*i].name,
                r.state,
                cite(items)
            ));
        }
        // C-222 needs the connection's current state.
        if let Some(chimney_abi::QueriedState::Tcp {
            delegated: Some(d), ..
        }) = &r.state
        {
            if let Some(k) = w.monitor.known.get_mut(&w.objs[*i].handle.0) {
                k.tcp_state = Some(d.state);
            }
        }
        compared += 1;
    }
    Ok(format!(
        "{compared} objects {}",
        if compare {
            "match the model"
        } else {
            "queried"
        }
    ))
}

/// Put the real types and handles into a reference tree shaped by `reference_tree`.
fn fix_ref_tree(
    w: &World<'_>,
    mut tree: Tree<RefBlock>,
    refs: &[Option<usize>],
    class: ClassName,
) -> Tree<RefBlock> {
    for (b, r) in tree.blocks.iter_mut().zip(refs) {
        if let Some(i) = r {
            b.state_type = w.objs[*i].ty(class);
            b.body = RefBlock::Object(w.objs[*i].handle);
        }
    }
    tree
}

fn apply_cached(st: &mut ObjectState, f: &CachedFields) -> Result<(), String> {
    match st {
        ObjectState::Neighbor(n) => {
            if let Some(v) = f.host_reachability_delta {
                n.cached.host_reachability_delta = v;
            }
            if let Some(m) = &f.dl_destination_address {
                let mac = crate::testbed::parse_mac(m).ok_or("bad MAC")?;
                n.cached.dl_destination_address = [0; 32];
                n.cached.dl_destination_address[..6].copy_from_slice(&mac);
            }
        }
        ObjectState::Path(p) => {
            if let Some(v) = f.path_mtu {
                p.cached.path_mtu = v;
            }
        }
        ObjectState::Tcp(t) => {
            let c = &mut t.cached;
            macro_rules! set {
                ($($f:ident => $g:ident),*) => {$(if let Some(v) = f.$f { c.$g = v; })*};
            }
            set!(ttl => ttl_or_hop_limit, tos => tos_or_traffic_class, flow_label => flow_label,
                 user_priority => user_priority, initial_rcv_wnd => initial_rcv_wnd,
                 rcv_indication_size => rcv_indication_size, ka_probe_count => ka_probe_count,
                 ka_timeout => ka_timeout, ka_interval => ka_interval, max_rt => max_rt);
        }
    }
    Ok(())
}

fn cached_of(st: &ObjectState) -> CachedState {
    match st {
        ObjectState::Neighbor(n) => CachedState::Neighbor(n.cached),
        ObjectState::Path(p) => CachedState::Path(p.cached),
        ObjectState::Tcp(t) => CachedState::Tcp(t.cached),
    }
}

fn step_update(
    w: &mut World<'_>,
    sel: &Selector,
    set: &CachedFields,
    expect: Option<StatusName>,
    expect_error: Option<Reason>,
    items: &[ItemId],
) -> StepResult {
    let chosen = w.select(sel)?;
    let mut next: HashMap<usize, ObjectState> = HashMap::new();
    for &i in &chosen {
        let mut st = w.objs[i].state;
        apply_cached(&mut st, set)?;
        next.insert(i, st);
    }
    let (mut tree, refs) = w.reference_tree(&chosen, |_| {
        (OffloadStateType::Neighbor, UpdateBlock::Placeholder)
    });
    for (b, r) in tree.blocks.iter_mut().zip(&refs) {
        if let Some(i) = r {
            b.state_type = w.objs[*i].ty(ClassName::Cached);
            b.body = UpdateBlock::Object {
                handle: w.objs[*i].handle,
                cached: Some(cached_of(&next[i])),
            };
        }
    }
    let n = tree.blocks.len();
    let c = w.call("update", RequestBody::Update(tree))?;
    if expect_error_or_not("update", &c, expect_error, items)? {
        return Ok(format!("refused with {:?}", expect_error));
    }
    let CompletionBody::Update(results) = &c.body else {
        return Err(format!("update: unexpected completion {:?}", c.body));
    };
    w.monitor.reference_op(RefOp::Update, n, c.status, results);
    for (b, r) in results.iter().enumerate() {
        if let (Some(Some(i)), NdisStatus::SUCCESS) = (refs.get(b), r.status) {
            w.objs[*i].state = next[i];
        }
    }
    check_status("update", expect, c.status, items)?;
    Ok(format!("{} objects updated", chosen.len()))
}

fn step_invalidate(
    w: &mut World<'_>,
    sel: &Selector,
    expect: Option<StatusName>,
    expect_error: Option<Reason>,
    items: &[ItemId],
) -> StepResult {
    let chosen = w.select(sel)?;
    let (tree, refs) = w.reference_tree(&chosen, |_| {
        (OffloadStateType::Neighbor, RefBlock::Placeholder)
    });
    let tree = fix_ref_tree(w, tree, &refs, ClassName::All);
    let n = tree.blocks.len();
    let c = w.call("invalidate", RequestBody::Invalidate(tree))?;
    if expect_error_or_not("invalidate", &c, expect_error, items)? {
        return Ok(format!("refused with {:?}", expect_error));
    }
    let CompletionBody::Invalidate(results) = &c.body else {
        return Err(format!("invalidate: unexpected completion {:?}", c.body));
    };
    w.monitor
        .reference_op(RefOp::Invalidate, n, c.status, results);
    check_status("invalidate", expect, c.status, items)?;
    Ok(format!("{} objects invalidated", chosen.len()))
}

fn step_terminate(
    w: &mut World<'_>,
    sel: &Selector,
    return_delegated: bool,
    expect: Option<StatusName>,
    expect_error: Option<Reason>,
    compare: bool,
    items: &[ItemId],
) -> StepResult {
    let chosen = w.select(sel)?;
    let (mut tree, refs) = w.reference_tree(&chosen, |_| {
        (OffloadStateType::Neighbor, TerminateBlock::Placeholder)
    });
    for (b, r) in tree.blocks.iter_mut().zip(&refs) {
        if let Some(i) = r {
            b.state_type = w.objs[*i].state.state_type();
            b.body = TerminateBlock::Object {
                handle: w.objs[*i].handle,
                return_delegated,
            };
        }
    }
    let n = tree.blocks.len();
    let (c, returned) = w.call_returning("terminate", RequestBody::Terminate(tree))?;
    if expect_error_or_not("terminate", &c, expect_error, items)? {
        return Ok(format!("refused with {:?}", expect_error));
    }
    let CompletionBody::Terminate(results) = &c.body else {
        return Err(format!("terminate: unexpected completion {:?}", c.body));
    };
    w.monitor
        .reference_op(RefOp::Terminate, n, c.status, results);
    w.marks.push((wall_clock(), "terminate".into()));
    let mut mismatch = None;
    let mut host_back = Vec::new();
    for (b, r) in results.iter().enumerate() {
        let Some(Some(i)) = refs.get(b) else { continue };
        let ok = r.status == NdisStatus::SUCCESS;
        w.monitor
            .terminated_block(b, return_delegated, r.state.is_some(), ok);
        if ok {
            let expected = match &w.objs[*i].state {
                ObjectState::Neighbor(s) => chimney_abi::DelegatedState::Neighbor(s.delegated),
                ObjectState::Path(s) => chimney_abi::DelegatedState::Path(s.delegated),
                ObjectState::Tcp(s) => chimney_abi::DelegatedState::Tcp(s.delegated),
            };
            if let (true, Some(chimney_abi::DelegatedState::Tcp(d))) =
                (w.host_offloaded.contains(&w.objs[*i].name), &r.state)
            {
                let mut data = returned
                    .iter()
                    .find(|x| x.block == b)
                    .cloned()
                    .unwrap_or_default();
                // Sends not waited for: the delegated SndUna says how many of their bytes
                // are unacknowledged. Those come back either in the returned chain (from
                // SndUna, in order: C-115) or as sends completed UPLOAD_IN_PROGRESS (C-145),
                // and the host stack re-sends them from its own copy; SUCCESS only for
                // acknowledged bytes (C-142).
                let name = w.objs[*i].name.clone();
                if let Some((sent, ids)) = w.unwaited.remove(&name) {
                    let end = w.seq_end.get(&name).copied().unwrap_or(d.snd_una);
                    let unacked = end.wrapping_sub(d.snd_una) as usize;
                    let success = w.link.sends_completed(&ids);
                    let silent: Vec<u64> = ids
                        .iter()
                        .copied()
                        .filter(|id| w.silent_sends.contains(id))
                        .collect();
                    let lied = w.link.sends_completed(&silent);
                    if lied > 0 {
                        w.monitor.violate(
                            142,
                            format!(
                                "{lied} bytes sent on `{name}` after its peer went silent \
                                 completed with SUCCESS: no ACK can have reached the device"
                            ),
                        );
                    }
                    for (id, st) in w.link.send_statuses(&ids) {
                        if st != NdisStatus::SUCCESS && st != NdisStatus::UPLOAD_IN_PROGRESS {
                            let item = if w.paused { 154 } else { 145 };
                            w.monitor.violate(
                                item,
                                format!(
                                    "send NBL {id:#x} of `{name}` completed with {st} during \
                                     the upload, expected UPLOAD_IN_PROGRESS (or SUCCESS if \
                                     acknowledged)"
                                ),
                            );
                        }
                    }
                    if d.state == TcpConnectionState::Closed {
                        // The connection ended in the device (timeout, reset): its SndUna is
                        // not live, nothing is re-sent; a returned chain is still the tail of
                        // what was sent, in order (C-115).
                        if !sent.ends_with(&data.send) && mismatch.is_none() {
                            mismatch = Some(format!(
                                "terminate of closed `{name}`: the returned chain ({} bytes) is \
                                 not the tail of the {} bytes sent without waiting [checks C-115]",
                                data.send.len(),
                                sent.len()
                            ));
                        }
                    } else if unacked > sent.len() {
                        if mismatch.is_none() {
                            mismatch = Some(format!(
                                "terminate of `{name}`: the returned SndUna leaves {unacked} \
                                 bytes unacknowledged, more than the {} sent without waiting",
                                sent.len()
                            ));
                        }
                    } else {
                        let tail = &sent[sent.len() - unacked..];
                        if success > sent.len() - unacked {
                            w.monitor.violate(
                                142,
                                format!(
                                    "{success} bytes of `{name}` completed with SUCCESS, but \
                                     the returned SndUna says only {} were acknowledged",
                                    sent.len() - unacked
                                ),
                            );
                        }
                        if !data.send.is_empty() && data.send != tail && mismatch.is_none() {
                            mismatch = Some(format!(
                                "terminate of `{name}`: the returned NetBufferListChain must \
                                 hold the {} unacknowledged bytes from SndUna in order; seen {} \
                                 bytes (SHA-256 {} vs {}) [checks C-115]",
                                tail.len(),
                                data.send.len(),
                                super::host::hex(&Sha256::digest(tail)),
                                super::host::hex(&Sha256::digest(&data.send)),
                            ));
                        }
                        data.send = tail.to_vec();
                    }
                }
                if let Some(st) = data
                    .send_statuses
                    .iter()
                    .find(|s| **s != NdisStatus::UPLOAD_IN_PROGRESS)
                {
                    let paused = if w.paused {
                        " (offloads paused: C-154)"
                    } else {
                        ""
                    };
                    w.monitor.violate(
                        145,
                        format!(
                            "terminate of `{}` handed back send NBLs with status {st}, expected \
                             UPLOAD_IN_PROGRESS{paused}",
                            w.objs[*i].name
                        ),
                    );
                }
                host_back.push((*i, *d, data));
            }
            // A live connection's delegated state moved on in the device (C-025).
            let live_conn = w.host_conns.contains(&w.objs[*i].name);
            if compare
                && !live_conn
                && return_delegated
                && r.state != Some(expected)
                && mismatch.is_none()
            {
                mismatch = Some(format!(
                    "terminate of `{}` (block {b}): expected delegated state {expected:?}, seen {:?}{}",
                    w.objs[*i].name,
                    r.state,
                    cite(items)
                ));
            }
            w.objs[*i].live = false;
            let h = w.objs[*i].handle.0;
            w.monitor.forget(h);
        }
    }
    check_status("terminate", expect, c.status, items)?;
    resume_host_connections(w, &host_back)?;
    if let Some(m) = mismatch {
        return Err(m);
    }
    let (snd, buf) = returned
        .iter()
        .fold((0, 0), |(a, b), r| (a + r.send.len(), b + r.buffered.len()));
    Ok(format!(
        "{} objects terminated; handed back {snd} unacknowledged send bytes and {buf} \
         buffered received bytes",
        chosen.len()
    ))
}

fn event_matches(e: &Event, kind: EventKind, reason: Option<u32>) -> bool {
    match kind {
        EventKind::Retrieve => {
            e.class == EventClass::TcpEvent
                && e.code == tcp_event::RETRIEVE
                && reason.is_none_or(|r| r == e.info)
        }
        EventKind::Disconnect => e.class == EventClass::TcpEvent && e.code == tcp_event::DISCONNECT,
        EventKind::Abort => e.class == EventClass::TcpEvent && e.code == tcp_event::ABORT,
        EventKind::SendBacklogChange => {
            e.class == EventClass::TcpEvent && e.code == tcp_event::SEND_BACKLOG_CHANGE
        }
        EventKind::NeighborReachabilityQuery => {
            e.class == EventClass::OffloadEvent
                && e.code == offload_event::NEIGHBOR_REACHABILITY_QUERY
        }
        EventKind::UploadAll => {
            e.class == EventClass::StatusIndication && e.status == NdisStatus::UPLOAD_ALL
        }
        EventKind::OffloadPause => {
            e.class == EventClass::StatusIndication && e.status == NdisStatus::OFFLOAD_PAUSE
        }
        EventKind::OffloadResume => {
            e.class == EventClass::StatusIndication && e.status == NdisStatus::OFFLOAD_RESUME
        }
    }
}

fn describe_event(w: &World<'_>, e: &Event) -> String {
    let who = e
        .handle
        .and_then(|h| w.objs.iter().find(|o| o.handle == h))
        .map(|o| format!("`{}`", o.name))
        .unwrap_or_else(|| format!("handle {:#x}", e.handle.map_or(0, |h| h.0)));
    format!(
        "{:?} code {} info {} status {} for {who}",
        e.class, e.code, e.info, e.status
    )
}

fn step_expect_events(
    w: &mut World<'_>,
    kind: EventKind,
    reason: Option<u32>,
    objects: &Option<Selector>,
    count: Option<u32>,
    items: &[ItemId],
) -> StepResult {
    let mut wanted: HashMap<u64, String> = HashMap::new();
    if let Some(sel) = objects {
        for i in w.select(sel)? {
            wanted.insert(w.objs[i].handle.0, w.objs[i].name.clone());
        }
    }
    let total = count.map_or(wanted.len(), |c| c as usize);
    if total == 0 {
        return Err("the selector named no live object to expect events for".into());
    }
    let deadline = Instant::now() + w.event_timeout;
    let mut got = 0;
    while got < total {
        let e = match w.events.pop_front() {
            Some(e) => e,
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "expected {total} {kind:?} event(s){}, seen {got} before giving up \
                         after {:?}{}",
                        reason
                            .map(|r| format!(" with reason {r}"))
                            .unwrap_or_default(),
                        w.event_timeout,
                        cite(items)
                    ));
                }
                w.poll_events(left.min(Duration::from_millis(200)))?;
                continue;
            }
        };
        let h = e.handle.map_or(0, |h| h.0);
        let ok =
            event_matches(&e, kind, reason) && (objects.is_none() || wanted.remove(&h).is_some());
        if !ok {
            return Err(format!(
                "expected a {kind:?} event{}{}, seen {}{}",
                reason
                    .map(|r| format!(" with reason {r}"))
                    .unwrap_or_default(),
                if objects.is_some() {
                    format!(" for one of the {} objects still waiting", wanted.len())
                } else {
                    String::new()
                },
                describe_event(w, &e),
                cite(items)
            ));
        }
        got += 1;
    }
    Ok(format!("{got} {kind:?} event(s), one per object"))
}

fn step_bad_request(
    w: &mut World<'_>,
    kind: BadRequestKind,
    object: &Option<String>,
    expect: Reason,
    items: &[ItemId],
) -> StepResult {
    if w.link.ring().is_none() {
        return Err("bad_request needs `driver = \"ring\"`".into());
    }
    let obj = match object {
        Some(n) => Some(w.find(n)?),
        None => None,
    };
    let tree_req = |body: RequestBody| {
        Request {
            request_id: 0,
            body,
        }
        .encode()
    };
    let c = match kind {
        BadRequestKind::Cycle => {
            let mut a = block(OffloadStateType::Neighbor, 1, RefBlock::Placeholder);
            a.dependent = Some(1);
            let mut b = block(OffloadStateType::Ip4, 2, RefBlock::Placeholder);
            b.next = Some(1);
            w.call("cycle", RequestBody::Query(Tree { blocks: vec![a, b] }))?
        }
        BadRequestKind::LayerOrder => {
            let mut a = block(OffloadStateType::Tcp, 1, RefBlock::Placeholder);
            a.dependent = Some(1);
            let b = block(OffloadStateType::Neighbor, 2, RefBlock::Placeholder);
            w.call(
                "layer order",
                RequestBody::Query(Tree { blocks: vec![a, b] }),
            )?
        }
        BadRequestKind::UnknownHandle => {
            let bogus = DeviceHandle((1u64 << 62) | (0x3FFF_0000u64 << 32) | 0xFFFF);
            w.call(
                "unknown handle",
                RequestBody::Query(Tree {
                    blocks: vec![block(
                        OffloadStateType::Neighbor,
                        1,
                        RefBlock::Object(bogus),
                    )],
                }),
            )?
        }
        BadRequestKind::WrongLayerHandle | BadRequestKind::StaleHandle => {
            let o = &w.objs[obj.ok_or("object missing")?];
            let ty = if kind == BadRequestKind::WrongLayerHandle {
                if o.layer() == Layer::Tcp {
                    OffloadStateType::Neighbor
                } else {
                    OffloadStateType::Tcp
                }
            } else {
                o.state.state_type()
            };
            let h = o.handle;
            w.call(
                "handle",
                RequestBody::Query(Tree {
                    blocks: vec![block(ty, 1, RefBlock::Object(h))],
                }),
            )?
        }
        BadRequestKind::UnknownOpcode => {
            let mut bytes = tree_req(RequestBody::Negotiate(chimney_abi::Negotiate {
                min_version: 1,
                max_version: 1,
            }));
            bytes[0..2].copy_from_slice(&0x77u16.to_le_bytes());
            let c = ring_bytes(w, &bytes)?;
            w.drain_events()?;
            c
        }
        BadRequestKind::Truncated => {
            let mut bytes = tree_req(RequestBody::Initiate(Tree {
                blocks: vec![block(
                    OffloadStateType::Neighbor,
                    1,
                    InitiateBlock::New(ObjectState::Neighbor(w.template.neighbor)),
                )],
            }));
            bytes.truncate(bytes.len() - 4);
            let len = bytes.len() as u32;
            bytes[4..8].copy_from_slice(&len.to_le_bytes());
            let c = ring_bytes(w, &bytes)?;
            w.drain_events()?;
            c
        }
        BadRequestKind::ConstUpdate => {
            let o = &w.objs[obj.ok_or("object missing")?];
            let mut bytes = tree_req(RequestBody::Update(Tree {
                blocks: vec![block(
                    o.ty(ClassName::Cached),
                    o.host_context,
                    UpdateBlock::Object {
                        handle: o.handle,
                        cached: Some(cached_of(&o.state)),
                    },
                )],
            }));
            // Request header 16 + tree header 8: block 0's Type byte. Say "const".
            bytes[24] = o.ty(ClassName::Const) as u8;
            let c = ring_bytes(w, &bytes)?;
            w.drain_events()?;
            c
        }
    };
    expect_error_or_not(&format!("bad request {kind:?}"), &c, Some(expect), items)?;
    Ok(format!("refused with {expect:?}"))
}

/// Raw request bytes on the control ring (driver = "ring" only).
fn ring_bytes(w: &mut World<'_>, bytes: &[u8]) -> Result<Completion, String> {
    let s = w
        .link
        .ring()
        .ok_or("raw requests need `driver = \"ring\"`")?;
    s.call_bytes(bytes, &[]).map_err(|e| e.to_string())
}

/// Hand a host-stack connection to the offload target: export it from the engine and
/// initiate neighbor → path → TCP with its real state.
fn step_offload_connection(
    w: &mut World<'_>,
    conn: &str,
    expect: Option<StatusName>,
    items: &[ItemId],
) -> StepResult {
    for name in [
        format!("{conn}.neighbor"),
        format!("{conn}.path"),
        conn.to_string(),
    ] {
        w.name_free(&name)?;
    }
    let host = w
        .host
        .as_mut()
        .ok_or_else(|| format!("no host-stack connection `{conn}` (open it first)"))?;
    let st = host.export(conn)?;
    let (mut n, p, t, data) = chimney_device::conversion::from_export(&st);
    // The device sends with its interface MAC (C-047); it has no configurable MAC, so a
    // non-zero DlSourceAddress would fail the neighbor (C-046).
    n.konst.dl_source_address = [0; 32];
    if !data.send.is_empty() || !data.buffered.is_empty() {
        host.import(conn, &st)?;
        return Err(format!(
            "`{conn}` has {} unacknowledged and {} undelivered bytes: offloading data needs \
             the data path",
            data.send.len(),
            data.buffered.len()
        ));
    }
    let (nctx, pctx, tctx) = (w.fresh_context(), w.fresh_context(), w.fresh_context());
    let mut nb = block(
        OffloadStateType::Neighbor,
        nctx,
        InitiateBlock::New(ObjectState::Neighbor(n)),
    );
    nb.dependent = Some(1);
    let mut pb = block(
        p.konst_type(),
        pctx,
        InitiateBlock::New(ObjectState::Path(p)),
    );
    pb.dependent = Some(2);
    let tb = block(
        OffloadStateType::Tcp,
        tctx,
        InitiateBlock::New(ObjectState::Tcp(t)),
    );
    let names = vec![
        Some(format!("{conn}.neighbor")),
        Some(format!("{conn}.path")),
        Some(conn.to_string()),
    ];
    let (overall, statuses) = initiate(
        w,
        Tree {
            blocks: vec![nb, pb, tb],
        },
        vec![Role::New; 3],
        names,
        vec![None; 3],
    )?;
    if statuses.get(2) == Some(&NdisStatus::SUCCESS) {
        w.host_offloaded.insert(conn.to_string());
        w.host_conns.insert(conn.to_string());
        w.seq_end.insert(conn.to_string(), t.delegated.snd_max);
    }
    check_status("offload_connection", expect, overall, items)?;
    if expect.is_none() && statuses.iter().any(|s| *s != NdisStatus::SUCCESS) {
        return Err(format!(
            "offload_connection: expected SUCCESS in every block, seen {statuses:?}{}",
            cite(items)
        ));
    }
    Ok(format!(
        "`{conn}` offloaded at snd_una {} rcv_nxt {}",
        t.delegated.snd_una, t.delegated.rcv_nxt
    ))
}

/// Send on an offloaded host-stack connection through the miniport's TCP send handler.
fn step_offloaded_send(w: &mut World<'_>, conn: &str, bytes: u64, items: &[ItemId]) -> StepResult {
    let i = w.find(conn)?;
    let ctx = w.objs[i].handle.0;
    let n = usize::try_from(bytes).map_err(|_| "too many bytes".to_string())?;
    let data = w
        .host
        .as_mut()
        .ok_or("host stack missing")?
        .take_bytes(conn, n)?;
    w.next_context += 1;
    let first_id = w.next_context << 16;
    w.offloaded_data_moved = true;
    if let Some(e) = w.seq_end.get_mut(conn) {
        *e = e.wrapping_add(n as u32);
    }
    let (st, done) = w.link.send_data(ctx, &data, first_id)?;
    if st != NdisStatus::PENDING {
        w.monitor.violate(
            138,
            format!("the send handler returned {st}, only PENDING is allowed"),
        );
    }
    let chunks = data.chunks(64 << 10).map(<[u8]>::len).collect::<Vec<_>>();
    for (k, (id, status, moved)) in done.iter().enumerate() {
        let want_id = first_id + k as u64;
        if *id != want_id {
            w.monitor.violate(
                140,
                format!("send completion {k} is NBL {id:#x}, expected {want_id:#x} (FIFO order)"),
            );
        }
        if *status != NdisStatus::SUCCESS {
            return Err(format!(
                "send of `{conn}`: expected NBL {id:#x} completed with SUCCESS, seen {status}{}",
                cite(items)
            ));
        }
        let want = chunks.get(k).copied().unwrap_or(0);
        if *moved != want {
            w.monitor.violate(
                143,
                format!("NBL {id:#x} completed with TcpOffloadBytesTransferred {moved}, {want} were sent"),
            );
        }
    }
    w.drain_events()?;
    Ok(format!(
        "{bytes} bytes in {} NBLs sent and completed through the miniport",
        done.len()
    ))
}

/// Send on an offloaded connection without waiting for the completions (C-138: PENDING):
/// the NBLs stay with the miniport; `terminate` judges what comes back (C-115).
fn step_offloaded_send_nowait(
    w: &mut World<'_>,
    conn: &str,
    bytes: u64,
    items: &[ItemId],
) -> StepResult {
    let i = w.find(conn)?;
    let ctx = w.objs[i].handle.0;
    let n = usize::try_from(bytes).map_err(|_| "too many bytes".to_string())?;
    let data = w
        .host
        .as_mut()
        .ok_or("host stack missing")?
        .take_bytes(conn, n)?;
    w.next_context += 1;
    let first_id = w.next_context << 16;
    w.offloaded_data_moved = true;
    if let Some(e) = w.seq_end.get_mut(conn) {
        *e = e.wrapping_add(n as u32);
    }
    let (st, ids) = w.link.send_nowait(ctx, &data, first_id)?;
    if st != NdisStatus::PENDING {
        w.monitor.violate(
            138,
            format!("the send handler returned {st}, only PENDING is allowed"),
        );
    }
    if w.silent.contains(conn) {
        w.silent_sends.extend(&ids);
    }
    let e = w.unwaited.entry(conn.to_string()).or_default();
    e.0.extend_from_slice(&data);
    e.1.extend(ids);
    w.drain_events()?;
    Ok(format!(
        "{bytes} bytes handed to the send handler (not waiting for completions){}",
        cite(items)
    ))
}

/// Disconnect an offloaded host-stack connection through the miniport, then judge what
/// the peer read.
fn step_offloaded_disconnect(
    w: &mut World<'_>,
    conn: &str,
    graceful: bool,
    peer_sha256: Option<&str>,
    items: &[ItemId],
) -> StepResult {
    let i = w.find(conn)?;
    let ctx = w.objs[i].handle.0;
    w.next_context += 1;
    let disconnect_id = w.next_context << 16;
    let (st, done) = w.link.disconnect(ctx, graceful, disconnect_id)?;
    if st != NdisStatus::PENDING {
        w.monitor.violate(
            180,
            format!("the disconnect handler returned {st}, only PENDING"),
        );
    }
    if graceful && done != NdisStatus::SUCCESS {
        return Err(format!(
            "graceful disconnect of `{conn}`: expected completion SUCCESS, seen {done}{}",
            cite(items)
        ));
    }
    let r = w
        .host
        .as_mut()
        .ok_or("host stack missing")?
        .finish_offloaded(conn, graceful, peer_sha256)
        .map_err(|e| format!("{e}{}", cite(items)))?;
    // Sends not waited for complete before the disconnect does: in order with SUCCESS
    // (graceful, C-185) or REQUEST_ABORTED (abortive, C-182).
    if let Some((_, ids)) = w.unwaited.remove(conn) {
        let seen = w.link.send_completions_vs_disconnect(&ids, disconnect_id);
        let (want, item) = if graceful {
            (NdisStatus::SUCCESS, 185)
        } else {
            (NdisStatus::REQUEST_ABORTED, 182)
        };
        let order: Vec<u64> = seen.iter().map(|(id, _, _)| *id).collect();
        if seen.len() != ids.len() || (graceful && order != ids) {
            w.monitor.violate(
                item,
                format!(
                    "{} of {} outstanding sends completed by the disconnect completion (ids in \
                     completion order {order:x?}, posted {ids:x?})",
                    seen.len(),
                    ids.len()
                ),
            );
        }
        for (id, st, before) in seen {
            if st != want || !before {
                w.monitor.violate(
                    item,
                    format!(
                        "send NBL {id:#x} completed with {st}{}, expected {want} before the \
                         disconnect completed",
                        if before {
                            ""
                        } else {
                            " after the disconnect completion"
                        }
                    ),
                );
            }
        }
    }
    // The connection stays offloaded until the host terminates it (C-190).
    w.host_offloaded.remove(conn);
    w.drain_events()?;
    Ok(format!("disconnect completed {done}; {r}"))
}

/// The SHA-256 a receive must see: `sha256` (hex) or, for "peer" / none, what the peer
/// was asked to write.
fn wanted_sha(sha256: Option<&str>, peer: &[u8; 32]) -> String {
    match sha256 {
        Some(s) if !s.eq_ignore_ascii_case("peer") => s.to_ascii_lowercase(),
        _ => super::host::hex(peer),
    }
}

/// Receive on a host-stack connection: the peer writes `bytes` (unless it `written` them
/// already), the engine reads them; they must continue the peer's stream exactly where the
/// last receive ended, and with nothing more unread at the peer nothing more is readable
/// (every byte exactly once, also across a terminate that handed buffered data back).
fn host_receive(
    h: &mut super::host::HostStack,
    conn: &str,
    bytes: u64,
    written: bool,
    sha256: Option<&str>,
    items: &[ItemId],
) -> StepResult {
    if !written {
        h.peer_write(conn, bytes)?;
    }
    let peer = h.expect_peer(conn, bytes)?;
    let got = h.receive(conn, bytes)?;
    let want = wanted_sha(sha256, &peer);
    if super::host::hex(&got) != want {
        return Err(format!(
            "receive on `{conn}` (host stack): expected {bytes} bytes with SHA-256 {want}, \
             seen SHA-256 {}{}",
            super::host::hex(&got),
            cite(items)
        ));
    }
    if h.peer_unread(conn) == 0 {
        let extra = h.readable_now(conn)?;
        if extra != 0 {
            return Err(format!(
                "receive on `{conn}` (host stack): expected nothing more to read after the \
                 peer's {bytes} bytes, seen {extra} more (delivered twice?){}",
                cite(items)
            ));
        }
    }
    Ok(format!(
        "{bytes} bytes received in the host stack, SHA-256 {want} as the peer sent"
    ))
}

/// Receive on an offloaded connection into buffers posted through the miniport's receive
/// handler (C-158/C-159): the peer writes `bytes`, the data must arrive byte-exact, in
/// order, exactly once.
fn step_offloaded_receive(
    w: &mut World<'_>,
    conn: &str,
    bytes: u64,
    written: bool,
    sha256: Option<&str>,
    items: &[ItemId],
) -> StepResult {
    let i = w.find(conn)?;
    let ctx = w.objs[i].handle.0;
    let n = usize::try_from(bytes).map_err(|_| "too many bytes".to_string())?;
    w.next_context += 1;
    w.offloaded_data_moved = true;
    let host = w.host.as_mut().ok_or("host stack missing")?;
    if written && host.peer_unread(conn) < bytes {
        return Err(format!(
            "receive on `{conn}`: {bytes} bytes `written` earlier, but the peer wrote only {} \
             unread bytes",
            host.peer_unread(conn)
        ));
    }
    let r = w.link.receive_data(ctx, n, w.next_context << 16, || {
        if !written {
            host.peer_write(conn, bytes)?;
        }
        Ok(())
    })?;
    let peer = host.expect_peer(conn, bytes)?;
    for (id, off, k) in &r.offset_mismatch {
        w.monitor.violate(
            165,
            format!(
                "receive NBL {id:#x}: DataOffset {off} after {k} bytes placed (must move past them)"
            ),
        );
    }
    if let Some((id, st)) = r.failed.first() {
        return Err(format!(
            "receive on `{conn}`: expected posted NBL {id:#x} completed with SUCCESS, seen \
             {st} after {} of {bytes} bytes{}",
            r.data.len(),
            cite(items)
        ));
    }
    let got = super::host::hex(&<[u8; 32]>::from(Sha256::digest(&r.data)));
    let want = wanted_sha(sha256, &peer);
    if r.data.len() != n || got != want {
        return Err(format!(
            "receive on `{conn}`: expected {bytes} bytes with SHA-256 {want}, seen {} bytes \
             with SHA-256 {got}{}",
            r.data.len(),
            cite(items)
        ));
    }
    w.drain_events()?;
    Ok(format!(
        "{bytes} bytes in {} posted NBLs, SHA-256 {want} as the peer sent",
        r.nbls
    ))
}

/// Receive on an offloaded connection by indication (C-170..C-172, C-175): the NDIS model
/// takes all of each indication (or `accept` bytes of it, the rest must come in a buffer
/// posted afterwards); the bytes must continue the peer's stream exactly.
fn step_offloaded_indicated(
    w: &mut World<'_>,
    conn: &str,
    bytes: u64,
    accept: Option<u32>,
    written: bool,
    sha256: Option<&str>,
    items: &[ItemId],
) -> StepResult {
    let i = w.find(conn)?;
    let (ctx, nh) = (w.objs[i].handle.0, w.objs[i].host_context);
    let n = usize::try_from(bytes).map_err(|_| "too many bytes".to_string())?;
    w.next_context += 1;
    w.offloaded_data_moved = true;
    let host = w.host.as_mut().ok_or("host stack missing")?;
    if written && host.peer_unread(conn) < bytes {
        return Err(format!(
            "receive on `{conn}`: {bytes} bytes `written` earlier, but the peer wrote only {} \
             unread bytes",
            host.peer_unread(conn)
        ));
    }
    let r = w
        .link
        .receive_indicated(ctx, nh, n, accept, w.next_context << 16, || {
            if !written {
                host.peer_write(conn, bytes)?;
            }
            Ok(())
        })?;
    let peer = host.expect_peer(conn, bytes)?;
    for (item, seen) in &r.violations {
        w.monitor.violate(*item, seen.clone());
    }
    if let Some((id, st)) = r.failed.first() {
        return Err(format!(
            "receive on `{conn}`: expected the posting NBL {id:#x} completed with SUCCESS, \
             seen {st}{}",
            cite(items)
        ));
    }
    let got = super::host::hex(&<[u8; 32]>::from(Sha256::digest(&r.data)));
    let want = wanted_sha(sha256, &peer);
    if r.data.len() != n || got != want {
        return Err(format!(
            "receive on `{conn}` by indication: expected {bytes} bytes with SHA-256 {want}, \
             seen {} bytes with SHA-256 {got} ({} indications, {} partly refused, {} postings){}",
            r.data.len(),
            r.indications,
            r.partial,
            r.postings,
            cite(items)
        ));
    }
    if r.indications == 0 {
        return Err(format!(
            "receive on `{conn}` by indication: expected the data indicated, seen no \
             indication ({} postings){}",
            r.postings,
            cite(items)
        ));
    }
    if accept.is_some() && r.partial == 0 {
        return Err(format!(
            "receive on `{conn}`: expected at least one indication larger than `accept` \
             (partly refused), seen none in {} indications{}",
            r.indications,
            cite(items)
        ));
    }
    w.drain_events()?;
    Ok(format!(
        "{bytes} bytes by {} indications ({} partly refused, {} postings, {} NBLs returned), \
         SHA-256 {want} as the peer sent",
        r.indications, r.partial, r.postings, r.returned
    ))
}

/// After a terminate: host-stack connections continue in the engine from the delegated
/// state the offload target returned.
fn resume_host_connections(
    w: &mut World<'_>,
    returned: &[(usize, chimney_abi::TcpDelegated, super::link::Returned)],
) -> Result<(), String> {
    for (i, d, data) in returned {
        let name = w.objs[*i].name.clone();
        if !w.host_offloaded.remove(&name) {
            continue;
        }
        let ObjectState::Tcp(mut t) = w.objs[*i].state else {
            continue;
        };
        // A connection that ended in the device (the peer reset it: C-192) has nothing to
        // continue in the host stack.
        if d.state == TcpConnectionState::Closed {
            if let Some(h) = w.host.as_mut() {
                h.forget(&name);
            }
            continue;
        }
        t.delegated = *d;
        let path = w.objs[*i]
            .parent
            .ok_or("offloaded connection without a path")?;
        let nbr = w.objs[path]
            .parent
            .ok_or("offloaded path without a neighbor")?;
        let (ObjectState::Neighbor(n), ObjectState::Path(p)) =
            (w.objs[nbr].state, w.objs[path].state)
        else {
            return Err("offloaded connection's parents are not a neighbor and a path".into());
        };
        let export = chimney_device::conversion::to_export(
            &n,
            &p,
            &t,
            // Unacknowledged send data and received, undelivered data come back with it
            // (§3.5.4, §3.5.5): the host stack retransmits the one and delivers the other.
            &chimney_abi::TcpData {
                block: 0,
                send: data.send.clone(),
                buffered: data.buffered.clone(),
            },
        );
        w.host
            .as_mut()
            .ok_or("host stack missing")?
            .import(&name, &export)
            .map_err(|e| {
                format!(
                    "{e} (returned: {} send bytes, {} buffered; delegated SndUna {} SndNxt {} \
                     SndMax {})",
                    data.send.len(),
                    data.buffered.len(),
                    d.snd_una,
                    d.snd_nxt,
                    d.snd_max
                )
            })?;
    }
    Ok(())
}

fn run_step(w: &mut World<'_>, step: &Step) -> StepOutcome {
    if let Some(why) = unsupported_reason(step) {
        return StepOutcome::Unsupported(why);
    }
    let items = step.verifies().to_vec();
    let r = match step {
        Step::OffloadSet {
            connections,
            family,
            expect,
            ..
        } => step_offload_set(w, *connections, *family, *expect, &items),
        Step::Offload {
            blocks,
            expect,
            expect_blocks,
            ..
        } => step_offload(w, blocks, *expect, expect_blocks, &items),
        Step::Query {
            objects,
            class,
            expect,
            compare,
            ..
        } => step_query(w, objects, *class, *expect, *compare, &items),
        Step::Update {
            objects,
            set,
            expect,
            expect_error,
            ..
        } => step_update(w, objects, set, *expect, expect_error.map(|r| r.0), &items),
        Step::Invalidate {
            objects,
            expect,
            expect_error,
            ..
        } => step_invalidate(w, objects, *expect, expect_error.map(|r| r.0), &items),
        Step::Terminate {
            objects,
            return_delegated,
            expect,
            expect_error,
            compare,
            ..
        } => step_terminate(
            w,
            objects,
            *return_delegated,
            *expect,
            expect_error.map(|r| r.0),
            *compare,
            &items,
        ),
        Step::ExpectEvents {
            kind,
            reason,
            objects,
            count,
            ..
        } => step_expect_events(w, *kind, reason.map(|r| r as u32), objects, *count, &items),
        Step::ExpectNoEvents { wait_ms, .. } => {
            let quiet = Duration::from_millis(u64::from(*wait_ms));
            match w.poll_events(quiet) {
                Err(e) => Err(e),
                Ok(_) => match w.events.pop_front() {
                    Some(e) => Err(format!(
                        "expected no event, seen {}{}",
                        describe_event(w, &e),
                        cite(&items)
                    )),
                    None => Ok(format!("no event within {quiet:?}")),
                },
            }
        }
        Step::BadRequest {
            kind,
            object,
            expect_error,
            ..
        } => step_bad_request(w, *kind, object, expect_error.0, &items),
        Step::Open {
            name,
            family,
            mode,
            port,
            ..
        } => {
            let Some(ns) = w.ns else {
                return StepOutcome::Unsupported(
                    "unsupported with --device-socket: `open` needs the Linux peer in the \
                     harness's own namespace"
                        .into(),
                );
            };
            if w.host.is_none() {
                match super::host::HostStack::new(w.vmm, w.queue_size, w.seed) {
                    Ok(h) => w.host = Some(h),
                    Err(e) => return StepOutcome::Failed(format!("host stack: {e}")),
                }
            }
            match w.host.as_mut() {
                Some(h) => h.open(
                    ns,
                    name,
                    *family == Family::Ipv6,
                    *mode == super::format::OpenMode::Active,
                    *port,
                ),
                None => Err("host stack missing".into()),
            }
        }
        Step::OffloadConnection { conn, expect, .. } => {
            step_offload_connection(w, conn, *expect, &items)
        }
        Step::Send {
            conn, bytes, wait, ..
        } => match w.host.as_mut() {
            Some(h) if h.has(conn) => h.send(conn, *bytes),
            Some(h) if h.is_parked(conn) && w.data_pair && !*wait => {
                step_offloaded_send_nowait(w, conn, *bytes, &items)
            }
            Some(h) if h.is_parked(conn) && w.data_pair => {
                step_offloaded_send(w, conn, *bytes, &items)
            }
            _ => return StepOutcome::Unsupported(DATA_RINGS.into()),
        },
        Step::Disconnect {
            conn,
            kind,
            peer_sha256,
            ..
        } => match w.host.as_mut() {
            Some(h) if h.is_parked(conn) && w.data_pair => step_offloaded_disconnect(
                w,
                conn,
                *kind == super::format::DisconnectKind::Graceful,
                peer_sha256.as_deref(),
                &items,
            ),
            Some(h) if h.has(conn) => h
                .close(
                    conn,
                    *kind == super::format::DisconnectKind::Graceful,
                    peer_sha256.as_deref(),
                )
                .map_err(|e| format!("{e}{}", cite(&items))),
            _ => return StepOutcome::Unsupported(DATA_RINGS.into()),
        },
        Step::Receive {
            conn,
            bytes,
            mode,
            sha256,
            accept,
            written,
            ..
        } => match w.host.as_mut() {
            Some(h) if h.has(conn) => {
                host_receive(h, conn, *bytes, *written, sha256.as_deref(), &items)
            }
            Some(h) if h.is_parked(conn) && w.data_pair => {
                if *mode == super::format::ReceiveMode::Indicated {
                    step_offloaded_indicated(
                        w,
                        conn,
                        *bytes,
                        *accept,
                        *written,
                        sha256.as_deref(),
                        &items,
                    )
                } else {
                    step_offloaded_receive(w, conn, *bytes, *written, sha256.as_deref(), &items)
                }
            }
            _ => return StepOutcome::Unsupported(DATA_RINGS.into()),
        },
        Step::Reachability { hrd, .. } => {
            if w.link.set_reachability_hrd(*hrd) {
                Ok(format!(
                    "the host answers reachability queries with HRD {hrd} from now on"
                ))
            } else {
                Err(
                    "`reachability` needs the NDIS driver (the host answers through the \
                     miniport)"
                        .into(),
                )
            }
        }
        Step::PeerWrite { conn, bytes, .. } => match w.host.as_mut() {
            Some(h) => h
                .peer_write(conn, *bytes)
                .map(|_| format!("the peer of `{conn}` wrote {bytes} bytes (not read yet)")),
            None => Err(format!("no connection `{conn}` (open it first)")),
        },
        Step::Peer { conn, action, .. } => {
            use super::format::PeerAction;
            use super::host::PeerCmd;
            let cmd = match action {
                PeerAction::Close => PeerCmd::Close,
                PeerAction::Reset => PeerCmd::Reset,
                PeerAction::StopReading => PeerCmd::StopReading,
                PeerAction::ResumeReading => PeerCmd::ResumeReading,
                PeerAction::GoSilent => {
                    let Some(ns) = w.ns else {
                        return StepOutcome::Unsupported(
                            "unsupported with --device-socket: `go_silent` needs the peer's \
                             namespace"
                                .into(),
                        );
                    };
                    let r = super::host::HostStack::go_silent(ns, "tap0");
                    w.silent.insert(conn.clone());
                    return match r {
                        Ok(s) => StepOutcome::Passed(s),
                        Err(e) => StepOutcome::Failed(e),
                    };
                }
            };
            match w.host.as_mut() {
                Some(h) => h
                    .peer(conn, cmd)
                    .map(|()| format!("peer of `{conn}`: {action:?}")),
                None => Err(format!("no connection `{conn}` (open it first)")),
            }
        }
        Step::Impair {
            loss,
            reorder,
            duplicate,
            delay_ms,
            ..
        } => {
            if w.offloaded_data_moved {
                return StepOutcome::Unsupported(
                    "unsupported by this device build: the device's `--impair` applies to \
                     offloaded traffic from its start, so an `impair` step must come before \
                     any offloaded data moves"
                        .into(),
                );
            }
            Ok(format!(
                "offloaded traffic impaired (device `--impair`, seeded by the scenario): loss \
                 {loss}, reorder {reorder}, duplicate {duplicate}, delay {delay_ms} ms"
            ))
        }
        Step::InjectEvent { .. } => Err("not implemented".into()),
    };
    match r {
        Ok(s) => StepOutcome::Passed(s),
        Err(e) => StepOutcome::Failed(e),
    }
}

/// Terminate whatever is still offloaded (TCP first, by tree), best effort, so an attached
/// device is clean for the next scenario.
fn cleanup(w: &mut World<'_>) {
    let live: Vec<usize> = (0..w.objs.len()).filter(|i| w.objs[*i].live).collect();
    if live.is_empty() {
        return;
    }
    let _ = step_terminate(
        w,
        &Selector(vec!["all".into()]),
        false,
        None,
        None,
        false,
        &[],
    );
}

/// Device command-line arguments for a scenario's `[device]` table.
fn device_args(sc: &Scenario, seed: u64) -> Vec<String> {
    let mut a = Vec::new();
    let d = &sc.device;
    for (flag, v) in [
        ("--max-neighbors", d.max_neighbors),
        ("--max-paths", d.max_paths),
        ("--max-tcp", d.max_tcp),
    ] {
        if let Some(v) = v {
            a.push(flag.to_string());
            a.push(v.to_string());
        }
    }
    // The device impairs offloaded traffic from its start (`--impair`, seeded by the
    // scenario); the `impair` step checks no offloaded data moved before it.
    if let Some(Step::Impair {
        loss,
        reorder,
        duplicate,
        delay_ms,
        ..
    }) = sc.steps.iter().find(|s| matches!(s, Step::Impair { .. }))
    {
        a.push("--impair".into());
        a.push(format!(
            "loss={loss},reorder={reorder},duplicate={duplicate},delay-ms={delay_ms},seed={seed}"
        ));
    }
    if let Some(p) = &d.policy {
        let base = sc.file.parent().unwrap_or(Path::new("."));
        a.push("--policy".into());
        a.push(base.join(p).display().to_string());
    }
    a
}

/// Does the device binary know `--policy` (issue 4)?
fn device_has_policy(bin: Option<&Path>) -> bool {
    let bin = match bin {
        Some(b) => b.to_path_buf(),
        None => match crate::device_process::device_binary() {
            Ok(b) => b,
            Err(_) => return false,
        },
    };
    std::process::Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--policy"))
        .unwrap_or(false)
}

/// Run one scenario. Never panics on scenario content; setup failures become a failed
/// report with `error` set.
pub fn run_scenario(sc: &Scenario, opts: &RunOptions) -> ScenarioReport {
    let started = Instant::now();
    let seed = scenario_seed(opts.seed, &sc.name);
    let mut report = ScenarioReport {
        name: sc.name.clone(),
        file: sc.file.clone(),
        summary: sc.summary.clone(),
        verifies: sc.verifies.clone(),
        seed,
        outcome: Outcome::Failed,
        error: None,
        steps: Vec::new(),
        violations: Vec::new(),
        duration: Duration::ZERO,
        pcap: None,
        plots: Vec::new(),
        marks: Vec::new(),
        replay: format!(
            "chimney-harness run {} --seed {}",
            sc.file.display(),
            opts.seed
        ),
    };
    let not_run = |sc: &Scenario, from: usize| -> Vec<StepReport> {
        sc.steps
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, s)| StepReport {
                index: i,
                name: s.name(),
                line: sc.step_lines.get(i).copied(),
                outcome: StepOutcome::NotRun,
                duration: Duration::ZERO,
            })
            .collect()
    };
    // Device settings an attached device cannot take, and a policy the device lacks.
    let unsupported_setup = if opts.device_socket.is_some() && !sc.device.is_default() {
        Some("unsupported with --device-socket: the scenario sets [device] options, which need a device the harness starts itself".to_string())
    } else if sc.device.policy.is_some() && !device_has_policy(opts.device.as_deref()) {
        Some("unsupported by this device build: [device] policy needs `chimney-device --policy` (issue 4)".to_string())
    } else {
        None
    };
    if let Some(why) = unsupported_setup {
        report.steps = not_run(sc, 0);
        if let Some(s) = report.steps.first_mut() {
            s.outcome = StepOutcome::Unsupported(why);
        }
        report.outcome = Outcome::Unsupported;
        report.duration = started.elapsed();
        return report;
    }

    // The machine: our own namespace + device, or the attached device.
    let mut bed_holder: Option<TestBed> = None;
    let mut attached: Option<Vmm> = None;
    let mut _tracked = None;
    // Without a namespace of ours the peer MAC is unknown: a fixed locally administered one.
    let mut peer_mac = [0x02, 0, 0, 0, 0, 1];
    let (vmm, ns): (&mut Vmm, Option<&chimney_wire::NetNs>) =
        if let Some(sock) = &opts.device_socket {
            match Vmm::connect(sock, &VmmConfig::default()) {
                Ok(v) => (attached.insert(v), None),
                Err(e) => {
                    report.error = Some(format!("connecting to {}: {e}", sock.display()));
                    report.steps = not_run(sc, 0);
                    report.duration = started.elapsed();
                    return report;
                }
            }
        } else {
            let mut cfg = TestBedConfig::default();
            cfg.device.binary = opts.device.clone();
            cfg.device.extra_args = device_args(sc, seed);
            // Pair 0 NIC, 1 control, 2 data (for offloaded connections' data).
            let q = sc.device.queue_pairs.unwrap_or(2);
            cfg.device.queue_pairs = q;
            cfg.vmm.queue_pairs = q;
            if let Some(dir) = &opts.pcap_dir {
                let p = dir.join(format!("{}.pcap", sc.name));
                cfg.device.extra_args.push("--pcap".into());
                cfg.device.extra_args.push(p.display().to_string());
                report.pcap = Some(p);
            }
            match TestBed::start(&cfg) {
                Ok(bed) => {
                    peer_mac = bed.peer_mac("tap0").unwrap_or(peer_mac);
                    _tracked = Some(super::cleanup::track(
                        Some(bed.ns.name().to_string()),
                        Some(bed.device.pid()),
                        Some(bed.device.socket_path().to_path_buf()),
                    ));
                    let TestBed { vmm, ns, .. } = bed_holder.insert(bed);
                    (vmm, Some(&*ns))
                }
                Err(e) => {
                    report.error = Some(format!("starting namespace + device + VMM: {e}"));
                    report.steps = not_run(sc, 0);
                    report.duration = started.elapsed();
                    return report;
                }
            }
        };

    // The offload target through the NDIS model (default) or the raw control ring.
    let mut session_holder: Option<ControlSession> = None;
    let link = match sc.driver {
        super::format::DriverKind::Ndis => {
            let mut params = chimney_abi::OffloadParameters::default();
            if let Some(v) = sc.parameters.nce_stale_ticks {
                params.nce_stale_ticks = v;
            }
            if let Some(v) = sc.parameters.tcp_maximum_retransmissions {
                params.tcp_maximum_retransmissions = v;
            }
            match crate::ndis::Ndis::start(vmm, &params) {
                Ok(n) => super::link::Link::Ndis {
                    ndis: Box::new(n),
                    cursor: 0,
                },
                Err(e) => {
                    report.error = Some(format!(
                        "miniport initialize + OID_TCP_CONNECTION_OFFLOAD_PARAMETERS: {e}"
                    ));
                    report.steps = not_run(sc, 0);
                    report.duration = started.elapsed();
                    return report;
                }
            }
        }
        super::format::DriverKind::Ring => match ControlSession::ready(vmm, opts.queue_size) {
            Ok((mut s, _)) => {
                s.timeout = Duration::from_secs(30);
                super::link::Link::Ring(session_holder.insert(s))
            }
            Err(e) => {
                report.error = Some(format!(
                    "control ring setup (NEGOTIATE, SET_PARAMETERS): {e}"
                ));
                report.steps = not_run(sc, 0);
                report.duration = started.elapsed();
                return report;
            }
        },
    };
    let mut link = link;
    let data_pair =
        link.is_ndis() && sc.device.queue_pairs.unwrap_or(2) >= 3 && opts.device_socket.is_none();
    if data_pair {
        if let Err(e) = link.attach_data_pair(vmm) {
            report.error = Some(format!("data pair: {e}"));
            report.steps = not_run(sc, 0);
            report.duration = started.elapsed();
            return report;
        }
    }
    let mut w = World {
        link,
        vmm,
        ns,
        host: None,
        host_offloaded: Default::default(),
        host_conns: Default::default(),
        offloaded_data_moved: false,
        unwaited: HashMap::new(),
        silent: Default::default(),
        silent_sends: Vec::new(),
        paused: false,
        seq_end: HashMap::new(),
        data_pair,
        queue_size: opts.queue_size,
        seed,
        objs: Vec::new(),
        monitor: Monitor::default(),
        events: VecDeque::new(),
        template: OffloadSet::foundation(seed, 16, peer_mac),
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed),
        next_context: 0x5000_0000,
        event_timeout: opts.event_timeout,
        marks: Vec::new(),
    };
    let mut stop_at = None;
    for (i, step) in sc.steps.iter().enumerate() {
        w.monitor.step = Some(i);
        let t = Instant::now();
        let outcome = run_step(&mut w, step);
        let stop = !matches!(outcome, StepOutcome::Passed(_));
        report.steps.push(StepReport {
            index: i,
            name: step.name(),
            line: sc.step_lines.get(i).copied(),
            outcome,
            duration: t.elapsed(),
        });
        if stop {
            stop_at = Some(i + 1);
            break;
        }
    }
    if let Some(from) = stop_at {
        report.steps.extend(not_run(sc, from));
    }
    w.monitor.step = None;
    // Listen a moment for stray events (e.g. one after a terminate, C-114).
    let _ = w.poll_events(Duration::from_millis(200));
    cleanup(&mut w);
    report.violations = std::mem::take(&mut w.monitor.violations);
    report.marks = std::mem::take(&mut w.marks);
    let failed = report.error.is_some()
        || !report.violations.is_empty()
        || report
            .steps
            .iter()
            .any(|s| matches!(s.outcome, StepOutcome::Failed(_)));
    let unsupported = report
        .steps
        .iter()
        .any(|s| matches!(s.outcome, StepOutcome::Unsupported(_)));
    report.outcome = if failed {
        Outcome::Failed
    } else if unsupported {
        Outcome::Unsupported
    } else {
        Outcome::Passed
    };
    // The host stack's queues live in the VMM's memory: drop it before the VMM.
    drop(w.host.take());
    drop(w);
    drop(session_holder);
    drop(attached);
    drop(bed_holder); // flushes the device's pcap
    if let (Some(pcap), Some(dir)) = (&report.pcap, &opts.plots_dir) {
        match super::plot::plot_pcap(pcap, dir, &sc.name, &report.marks) {
            Ok(files) => report.plots = files,
            Err(e) => tracing::warn!(scenario = %sc.name, error = %e, "no plot"),
        }
    }
    report.duration = started.elapsed();
    report
}
