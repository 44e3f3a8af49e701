//! Conformance checks that run on every scenario, whatever its steps ask: each completion
//! and each event the device returns is held against the observable rules of the digest's
//! checklist. A violation names its C-item and what was seen, and fails the scenario.
//!
//! Checked today (control ring):
//! - statuses allowed per operation: initiate C-044, query C-077, update C-092,
//!   invalidate C-103, terminate C-112;
//! - a status in every block of an initiate tree (C-041) and of the other trees;
//! - initiate semantics: handle only for a successful new offload (C-040), a block's
//!   SUCCESS/PARTIAL_SUCCESS against its immediate dependents (C-042), linkers (C-038),
//!   placeholders (C-036), nothing succeeds after a failed root (C-043);
//! - query returns exactly the structures its Type names (C-076), const variables as
//!   offloaded (C-023), cached variables as offloaded or last updated (C-024);
//! - terminate returns delegated state exactly when asked (C-111);
//! - events: upload requests only for TCP objects (C-105), the stored host context
//!   (C-028), a valid upload reason (C-221), none in FIN_WAIT1/2 or CLOSE_WAIT (C-222),
//!   none for an object after its terminate completed (C-114), NULL block list for offload
//!   events other than NeighborReachabilityQuery and no NeighborReachabilityInDoubt
//!   (C-229).
//!
//! Limits: the harness sees the control ring in order, so "after the terminate completed"
//! means after the harness read the completion; an event the device wrote later but the
//! driver read in the same poll is not caught (never a false alarm).

use std::collections::{HashMap, HashSet};
use std::fmt;

use chimney_abi::event::{offload_event, tcp_event, upload_reason};
use chimney_abi::{
    BlockResult, Event, EventClass, Layer, NdisStatus, ObjectState, QueriedState,
    TcpConnectionState,
};

use super::format::ItemId;

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub item: ItemId,
    /// Step index (0-based) during which it was seen.
    pub step: Option<usize>,
    pub seen: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step {
            Some(s) => write!(
                f,
                "{} violated during step {}: {}",
                self.item,
                s + 1,
                self.seen
            ),
            None => write!(f, "{} violated: {}", self.item, self.seen),
        }
    }
}

/// What kind of block the harness put in an initiate tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    New,
    Linker,
    Placeholder,
}

/// What the monitor knows about one offloaded object.
#[derive(Debug, Clone)]
pub struct Known {
    pub layer: Layer,
    pub host_context: u64,
    pub tcp_state: Option<TcpConnectionState>,
}

/// Collects violations over a whole scenario.
#[derive(Debug, Default)]
pub struct Monitor {
    pub violations: Vec<Violation>,
    /// Live objects by device handle.
    pub known: HashMap<u64, Known>,
    /// Handles whose terminate completed.
    pub terminated: HashSet<u64>,
    pub step: Option<usize>,
}

const INITIATE_STATUSES: &[NdisStatus] = &[
    NdisStatus::SUCCESS,
    NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
    NdisStatus::FAILURE,
    NdisStatus::RESOURCES,
    NdisStatus::OFFLOAD_TCP_ENTRIES,
    NdisStatus::OFFLOAD_PATH_ENTRIES,
    NdisStatus::OFFLOAD_NEIGHBOR_ENTRIES,
    NdisStatus::OFFLOAD_IP_ADDRESS_ENTRIES,
    NdisStatus::OFFLOAD_HW_ADDRESS_ENTRIES,
    NdisStatus::OFFLOAD_TCP_XMIT_BUFFER,
    NdisStatus::OFFLOAD_TCP_RCV_BUFFER,
    NdisStatus::OFFLOAD_TCP_RCV_WINDOW,
    NdisStatus::OFFLOAD_VLAN_ENTRIES,
    NdisStatus::OFFLOAD_VLAN_MISMATCH,
    NdisStatus::OFFLOAD_PATH_MTU,
    NdisStatus::OFFLOAD_CONNECTION_REJECTED,
];

/// The operations whose per-block statuses are SUCCESS or FAILURE only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefOp {
    Query,
    Update,
    Invalidate,
    Terminate,
}

impl RefOp {
    fn item(self) -> ItemId {
        ItemId(match self {
            RefOp::Query => 77,
            RefOp::Update => 92,
            RefOp::Invalidate => 103,
            RefOp::Terminate => 112,
        })
    }
    fn name(self) -> &'static str {
        match self {
            RefOp::Query => "query",
            RefOp::Update => "update",
            RefOp::Invalidate => "invalidate",
            RefOp::Terminate => "terminate",
        }
    }
}

impl Monitor {
    pub fn violate(&mut self, item: u16, seen: String) {
        self.violations.push(Violation {
            item: ItemId(item),
            step: self.step,
            seen,
        });
    }

    /// An initiate completion. `roles[i]` and `dependents[i]` (indices of the blocks in
    /// block i's dependent list) describe the request tree.
    pub fn initiate(
        &mut self,
        roles: &[Role],
        dependents: &[Vec<usize>],
        overall: NdisStatus,
        results: &[BlockResult<core::convert::Infallible>],
    ) {
        if results.len() != roles.len() {
            self.violate(
                41,
                format!(
                    "initiate tree of {} blocks came back with {} block statuses",
                    roles.len(),
                    results.len()
                ),
            );
            return;
        }
        for (i, r) in results.iter().enumerate() {
            if !INITIATE_STATUSES.contains(&r.status) {
                self.violate(
                    44,
                    format!(
                        "initiate block {i}: status {} is not an initiate status",
                        r.status
                    ),
                );
            }
            let ok =
                r.status == NdisStatus::SUCCESS || r.status == NdisStatus::OFFLOAD_PARTIAL_SUCCESS;
            match (roles[i], ok, r.handle.is_some()) {
                (Role::New, true, false) => self.violate(
                    40,
                    format!(
                        "initiate block {i}: {} but no context (handle) written",
                        r.status
                    ),
                ),
                (Role::New, false, true) | (Role::Linker | Role::Placeholder, _, true) => self
                    .violate(
                        40,
                        format!(
                            "initiate block {i} ({:?}, {}): a handle was written where the \
                             location must stay untouched",
                            roles[i], r.status
                        ),
                    ),
                _ => {}
            }
        }
        if results[0].status.is_error() || results[0].status == NdisStatus::FAILURE {
            if let Some((i, r)) = results
                .iter()
                .enumerate()
                .skip(1)
                .find(|(_, r)| r.status == NdisStatus::SUCCESS && r.handle.is_some())
            {
                self.violate(
                    43,
                    format!(
                        "root block failed ({}) but block {i} was offloaded ({})",
                        results[0].status, r.status
                    ),
                );
            }
        }
        for (i, deps) in dependents.iter().enumerate() {
            let own = results[i].status;
            // Digest §7.1 item 30: a placeholder is SUCCESS even if every dependent failed.
            if roles[i] == Role::Placeholder {
                if own != NdisStatus::SUCCESS {
                    self.violate(
                        36,
                        format!("placeholder block {i} has {own}, a placeholder is always SUCCESS"),
                    );
                }
                continue;
            }
            if deps.is_empty() {
                continue;
            }
            // "Offloaded" = own state offloaded: SUCCESS or PARTIAL_SUCCESS.
            let failed = deps
                .iter()
                .filter(|d| {
                    let s = results[**d].status;
                    s != NdisStatus::SUCCESS && s != NdisStatus::OFFLOAD_PARTIAL_SUCCESS
                })
                .count();
            match roles[i] {
                Role::New => {
                    if own == NdisStatus::SUCCESS && failed > 0 {
                        self.violate(
                            42,
                            format!(
                                "block {i} is SUCCESS but {failed} of its {} immediate \
                                 dependents were not offloaded",
                                deps.len()
                            ),
                        );
                    }
                    if own == NdisStatus::OFFLOAD_PARTIAL_SUCCESS && failed == 0 {
                        self.violate(
                            42,
                            format!(
                                "block {i} is PARTIAL_SUCCESS but all {} immediate dependents \
                                 were offloaded",
                                deps.len()
                            ),
                        );
                    }
                }
                Role::Linker => {
                    let want = if failed == 0 {
                        NdisStatus::SUCCESS
                    } else if failed == deps.len() {
                        NdisStatus::FAILURE
                    } else {
                        NdisStatus::OFFLOAD_PARTIAL_SUCCESS
                    };
                    if own != want {
                        self.violate(
                            38,
                            format!(
                                "linker block {i}: {failed} of {} dependents failed, so {want} \
                                 expected, seen {own}",
                                deps.len()
                            ),
                        );
                    }
                }
                Role::Placeholder => {}
            }
        }
        let _ = overall;
    }

    /// Completion of a query/update/invalidate/terminate tree of `blocks` blocks.
    pub fn reference_op<S>(
        &mut self,
        op: RefOp,
        blocks: usize,
        overall: NdisStatus,
        results: &[BlockResult<S>],
    ) {
        let item = op.item();
        let allowed = [NdisStatus::SUCCESS, NdisStatus::FAILURE];
        if !allowed.contains(&overall) {
            self.violate(
                item.0,
                format!(
                    "{} completion status {overall}: only SUCCESS or FAILURE",
                    op.name()
                ),
            );
        }
        if results.len() != blocks {
            self.violate(
                item.0,
                format!(
                    "{} tree of {blocks} blocks came back with {} block statuses",
                    op.name(),
                    results.len()
                ),
            );
        }
        for (i, r) in results.iter().enumerate() {
            if !allowed.contains(&r.status) {
                self.violate(
                    item.0,
                    format!(
                        "{} block {i}: status {}, only SUCCESS or FAILURE allowed",
                        op.name(),
                        r.status
                    ),
                );
            }
        }
    }

    /// A successful query block of a known object: structure shape (C-076), const (C-023)
    /// and cached (C-024) variables against the model.
    pub fn queried(&mut self, block: usize, ty_expect: &QueriedState, seen: &Option<QueriedState>) {
        let Some(seen) = seen else {
            self.violate(
                76,
                format!("query block {block}: SUCCESS without the requested state"),
            );
            return;
        };
        let shape = |q: &QueriedState| match q {
            QueriedState::Neighbor {
                konst,
                cached,
                delegated,
            } => (konst.is_some(), cached.is_some(), delegated.is_some()),
            QueriedState::Path {
                konst,
                cached,
                delegated,
            } => (konst.is_some(), cached.is_some(), delegated.is_some()),
            QueriedState::Tcp {
                konst,
                cached,
                delegated,
            } => (konst.is_some(), cached.is_some(), delegated.is_some()),
        };
        if shape(ty_expect) != shape(seen)
            || std::mem::discriminant(ty_expect) != std::mem::discriminant(seen)
        {
            self.violate(
                76,
                format!(
                    "query block {block}: Type asks for (const, cached, delegated) = {:?}, \
                     the device filled {:?}",
                    shape(ty_expect),
                    shape(seen)
                ),
            );
            return;
        }
        let (ck, cc) = match (ty_expect, seen) {
            (
                QueriedState::Neighbor { konst, cached, .. },
                QueriedState::Neighbor {
                    konst: k2,
                    cached: c2,
                    ..
                },
            ) => (diff(konst, k2), diff(cached, c2)),
            (
                QueriedState::Path { konst, cached, .. },
                QueriedState::Path {
                    konst: k2,
                    cached: c2,
                    ..
                },
            ) => (diff(konst, k2), diff(cached, c2)),
            (
                QueriedState::Tcp { konst, cached, .. },
                QueriedState::Tcp {
                    konst: k2,
                    cached: c2,
                    ..
                },
            ) => (diff(konst, k2), diff(cached, c2)),
            _ => (None, None),
        };
        if let Some(d) = ck {
            self.violate(
                23,
                format!("query block {block}: const variables changed: {d}"),
            );
        }
        if let Some(d) = cc {
            self.violate(
                24,
                format!("query block {block}: cached variables differ from the host's: {d}"),
            );
        }
    }

    /// A terminate block: delegated state present exactly when asked (C-111).
    pub fn terminated_block(&mut self, block: usize, asked: bool, present: bool, ok: bool) {
        if ok && asked && !present {
            self.violate(
                111,
                format!(
                    "terminate block {block}: SUCCESS but the delegated state was not returned"
                ),
            );
        }
        if !asked && present {
            self.violate(
                111,
                format!("terminate block {block}: delegated state returned though not asked for"),
            );
        }
    }

    /// An object whose terminate completed: no event may name it any more.
    pub fn forget(&mut self, handle: u64) {
        self.known.remove(&handle);
        self.terminated.insert(handle);
    }

    /// Every event read from the control ring.
    pub fn event(&mut self, e: &Event) {
        let h = e.handle.map(|h| h.0);
        if let Some(h) = h {
            if self.terminated.contains(&h) {
                self.violate(
                    114,
                    format!(
                        "event {} (class {:?} code {} info {}) names handle {h:#x} after its \
                         terminate completed",
                        e.sequence, e.class, e.code, e.info
                    ),
                );
                return;
            }
        }
        match e.class {
            EventClass::TcpEvent => {
                let Some(h) = h else {
                    self.violate(
                        28,
                        format!(
                            "TCP event {} (code {}) without a connection handle",
                            e.sequence, e.code
                        ),
                    );
                    return;
                };
                let Some(k) = self.known.get(&h).cloned() else {
                    return;
                };
                if k.host_context != e.host_context {
                    self.violate(
                        28,
                        format!(
                            "event {} for handle {h:#x} carries host context {:#x}, the \
                             offload stored {:#x}",
                            e.sequence, e.host_context, k.host_context
                        ),
                    );
                }
                if e.code == tcp_event::RETRIEVE {
                    if k.layer != Layer::Tcp {
                        self.violate(
                            105,
                            format!(
                                "TcpIndicateRetrieve for a {:?} object (handle {h:#x})",
                                k.layer
                            ),
                        );
                    }
                    if !(upload_reason::LOW_ACTIVITY..=upload_reason::HARDWARE_FAILURE)
                        .contains(&e.info)
                    {
                        self.violate(
                            221,
                            format!("TcpIndicateRetrieve with upload reason {} (1..=11)", e.info),
                        );
                    }
                    if let Some(
                        st @ (TcpConnectionState::FinWait1
                        | TcpConnectionState::FinWait2
                        | TcpConnectionState::CloseWait),
                    ) = k.tcp_state
                    {
                        self.violate(
                            222,
                            format!(
                                "TcpIndicateRetrieve for handle {h:#x} while the connection \
                                 is in {st:?}"
                            ),
                        );
                    }
                }
            }
            EventClass::OffloadEvent => {
                if e.code == offload_event::NEIGHBOR_REACHABILITY_IN_DOUBT {
                    self.violate(
                        229,
                        format!(
                            "event {}: NeighborReachabilityInDoubt is reserved",
                            e.sequence
                        ),
                    );
                } else if e.code != offload_event::NEIGHBOR_REACHABILITY_QUERY
                    && !e.payload.is_empty()
                {
                    self.violate(
                        229,
                        format!(
                            "offload event {} code {}: block list must be NULL, {} bytes seen",
                            e.sequence,
                            e.code,
                            e.payload.len()
                        ),
                    );
                }
            }
            EventClass::StatusIndication => {}
        }
    }
}

/// `None` if equal, else both values.
fn diff<T: PartialEq + fmt::Debug>(expected: &Option<T>, seen: &Option<T>) -> Option<String> {
    match (expected, seen) {
        (Some(a), Some(b)) if a != b => Some(format!("expected {a:?}, seen {b:?}")),
        _ => None,
    }
}

/// The model's full state of an object, for `QueriedState::select`.
pub fn expected_query(ty: chimney_abi::OffloadStateType, model: &ObjectState) -> QueriedState {
    QueriedState::select(ty, model)
}

#[cfg(test)]
mod tests {
    //! Planted faults at the monitor's level: completions and events that break a rule
    //! must produce exactly the violation of that C-item (device-level planted faults need
    //! issue 4's policy file).
    use super::*;
    use chimney_abi::{DeviceHandle, OffloadStateType};

    fn res(status: NdisStatus, handle: Option<u64>) -> BlockResult<core::convert::Infallible> {
        BlockResult {
            state_type: OffloadStateType::Tcp,
            status,
            handle: handle.map(DeviceHandle),
            state: None,
        }
    }

    fn items(m: &Monitor) -> Vec<u16> {
        m.violations.iter().map(|v| v.item.0).collect()
    }

    fn tcp_event(handle: u64, ctx: u64, code: u32, info: u32) -> Event {
        Event {
            sequence: 7,
            class: EventClass::TcpEvent,
            status: NdisStatus::SUCCESS,
            handle: Some(DeviceHandle(handle)),
            host_context: ctx,
            code,
            info,
            payload: Vec::new(),
        }
    }

    fn known(layer: Layer, st: Option<TcpConnectionState>) -> Known {
        Known {
            layer,
            host_context: 0x55,
            tcp_state: st,
        }
    }

    #[test]
    fn a_conforming_initiate_has_no_violation() {
        let mut m = Monitor::default();
        let roles = [Role::New, Role::New, Role::New];
        let deps = vec![vec![1], vec![2], vec![]];
        let r = [
            res(NdisStatus::SUCCESS, Some(1)),
            res(NdisStatus::OFFLOAD_PARTIAL_SUCCESS, Some(2)),
            res(NdisStatus::OFFLOAD_TCP_ENTRIES, None),
        ];
        m.initiate(&roles, &deps, NdisStatus::SUCCESS, &r);
        assert!(m.violations.is_empty(), "seen {:?}", m.violations);
    }

    #[test]
    fn missing_block_status_is_c041() {
        let mut m = Monitor::default();
        m.initiate(
            &[Role::New, Role::New],
            &[vec![1], vec![]],
            NdisStatus::SUCCESS,
            &[res(NdisStatus::SUCCESS, Some(1))],
        );
        assert_eq!(items(&m), vec![41]);
    }

    #[test]
    fn success_with_a_failed_dependent_is_c042_and_handle_on_failure_is_c040() {
        let mut m = Monitor::default();
        let r = [
            res(NdisStatus::SUCCESS, Some(1)),
            res(NdisStatus::FAILURE, Some(2)),
        ];
        m.initiate(
            &[Role::New, Role::New],
            &[vec![1], vec![]],
            NdisStatus::SUCCESS,
            &r,
        );
        let mut seen = items(&m);
        seen.sort();
        assert_eq!(seen, vec![40, 42], "seen {:?}", m.violations);
    }

    #[test]
    fn linker_status_against_its_dependents_is_c038() {
        let mut m = Monitor::default();
        let r = [
            res(NdisStatus::SUCCESS, None),
            res(NdisStatus::SUCCESS, Some(2)),
            res(NdisStatus::FAILURE, None),
        ];
        m.initiate(
            &[Role::Linker, Role::New, Role::New],
            &[vec![1, 2], vec![], vec![]],
            NdisStatus::SUCCESS,
            &r,
        );
        assert_eq!(items(&m), vec![38], "seen {:?}", m.violations);
    }

    #[test]
    fn non_success_placeholder_is_c036() {
        let mut m = Monitor::default();
        m.initiate(
            &[Role::Placeholder],
            &[vec![]],
            NdisStatus::FAILURE,
            &[res(NdisStatus::FAILURE, None)],
        );
        assert_eq!(items(&m), vec![36]);
    }

    #[test]
    fn query_block_status_other_than_success_or_failure_is_c077() {
        let mut m = Monitor::default();
        let r = [BlockResult::<QueriedState> {
            state_type: OffloadStateType::Tcp,
            status: NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
            handle: None,
            state: None,
        }];
        m.reference_op(RefOp::Query, 1, NdisStatus::SUCCESS, &r);
        assert_eq!(items(&m), vec![77]);
    }

    #[test]
    fn event_after_terminate_is_c114() {
        let mut m = Monitor::default();
        m.known
            .insert(9, known(Layer::Tcp, Some(TcpConnectionState::Established)));
        m.forget(9);
        m.event(&tcp_event(
            9,
            0x55,
            tcp_event::RETRIEVE,
            upload_reason::LOW_ACTIVITY,
        ));
        assert_eq!(items(&m), vec![114], "seen {:?}", m.violations);
    }

    #[test]
    fn retrieve_for_a_path_is_c105_and_bad_reason_is_c221() {
        let mut m = Monitor::default();
        m.known.insert(3, known(Layer::Path, None));
        m.event(&tcp_event(3, 0x55, tcp_event::RETRIEVE, 12));
        let mut seen = items(&m);
        seen.sort();
        assert_eq!(seen, vec![105, 221], "seen {:?}", m.violations);
    }

    #[test]
    fn retrieve_in_close_wait_is_c222_and_wrong_context_is_c028() {
        let mut m = Monitor::default();
        m.known
            .insert(4, known(Layer::Tcp, Some(TcpConnectionState::CloseWait)));
        m.event(&tcp_event(
            4,
            0x99,
            tcp_event::RETRIEVE,
            upload_reason::LOW_ACTIVITY,
        ));
        let mut seen = items(&m);
        seen.sort();
        assert_eq!(seen, vec![28, 222], "seen {:?}", m.violations);
    }

    #[test]
    fn reachability_in_doubt_is_reserved_c229() {
        let mut m = Monitor::default();
        let e = Event {
            sequence: 1,
            class: EventClass::OffloadEvent,
            status: NdisStatus::SUCCESS,
            handle: None,
            host_context: 0,
            code: offload_event::NEIGHBOR_REACHABILITY_IN_DOUBT,
            info: 0,
            payload: Vec::new(),
        };
        m.event(&e);
        assert_eq!(items(&m), vec![229]);
    }
}
