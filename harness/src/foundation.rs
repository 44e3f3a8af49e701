//! The foundation sequence of issue 2 through the real device: offload 1 neighbor → 2 paths
//! → N TCP objects (IPv4 and IPv6), query them back field by field, update cached
//! variables (a const change refused), invalidate the neighbor, terminate everything and
//! compare the returned delegated state; placeholders and linkers (C-036..C-038); bad
//! input that must get ERROR completions while the device keeps serving.
//!
//! Each step returns `Ok(summary)` or `Err(expected vs seen)`. The tests in
//! `harness/tests/` and `chimney-harness smoke` run the same steps.

use chimney_abi::completion::BlockResult;
use chimney_abi::{
    Block, CachedState, Completion, CompletionBody, DelegatedState, DeviceHandle, ErrorInfo,
    InitiateBlock, Layer, NdisStatus, ObjectState, OffloadStateType, QueriedState, Reason,
    RefBlock, Request, RequestBody, TerminateBlock, Tree, UpdateBlock,
};

use crate::control_session::ControlSession;
use crate::objects::{self, host_context, ObjectRef, OffloadSet};

pub type Step<T> = Result<T, String>;

/// What the device holds after a successful initiate.
#[derive(Debug, Clone)]
pub struct Offloaded {
    pub set: OffloadSet,
    pub tree: Tree<InitiateBlock>,
    /// Object behind each block of `tree`.
    pub refs: Vec<ObjectRef>,
    /// Device handle of each block's object.
    pub handles: Vec<DeviceHandle>,
}

impl Offloaded {
    pub fn handle(&self, r: ObjectRef) -> DeviceHandle {
        let i = self.refs.iter().position(|x| *x == r).unwrap_or(0);
        self.handles[i]
    }
}

fn call(s: &mut ControlSession, what: &str, body: RequestBody) -> Step<Completion> {
    s.call(body).map_err(|e| format!("{what}: {e}"))
}

fn layer_of(r: ObjectRef) -> Layer {
    match r {
        ObjectRef::Neighbor => Layer::Neighbor,
        ObjectRef::Path(_) => Layer::Path,
        ObjectRef::Tcp(_) => Layer::Tcp,
    }
}

/// Expect an ERROR completion with `reason`; returns its info.
pub fn expect_error(what: &str, c: &Completion, reason: Reason) -> Step<ErrorInfo> {
    match &c.body {
        CompletionBody::Error(e) if e.reason == reason => Ok(e.clone()),
        CompletionBody::Error(e) => Err(format!(
            "{what}: expected ERROR reason {reason:?}, seen {:?} (field {:?}, block {:?}, status {})",
            e.reason, e.field, e.block, c.status
        )),
        other => Err(format!(
            "{what}: expected ERROR reason {reason:?}, seen a {} completion {other:?}",
            c.status
        )),
    }
}

fn block_results<'a, S>(
    what: &str,
    c: &'a Completion,
    get: impl Fn(&'a CompletionBody) -> Option<&'a Vec<BlockResult<S>>>,
    blocks: usize,
) -> Step<&'a Vec<BlockResult<S>>> {
    let r = get(&c.body).ok_or_else(|| {
        format!(
            "{what}: expected a completion with block results, seen status {} body {:?}",
            c.status,
            short(&c.body)
        )
    })?;
    if r.len() != blocks {
        return Err(format!(
            "{what}: expected {blocks} block results, seen {}",
            r.len()
        ));
    }
    Ok(r)
}

fn short(b: &CompletionBody) -> String {
    let s = format!("{b:?}");
    if s.len() > 300 {
        format!("{}…", &s[..300])
    } else {
        s
    }
}

fn all_success<S>(what: &str, r: &[BlockResult<S>]) -> Step<()> {
    if let Some((i, b)) = r
        .iter()
        .enumerate()
        .find(|(_, b)| b.status != NdisStatus::SUCCESS)
    {
        return Err(format!(
            "{what}: expected SUCCESS in every block, block {i} has {}",
            b.status
        ));
    }
    Ok(())
}

/// Initiate the whole set in one tree; every block SUCCESS with a handle of its layer.
pub fn offload(s: &mut ControlSession, set: &OffloadSet) -> Step<Offloaded> {
    let (tree, refs) = set.initiate_tree();
    let n = tree.blocks.len();
    let c = call(s, "initiate", RequestBody::Initiate(tree.clone()))?;
    if c.status != NdisStatus::SUCCESS {
        return Err(format!(
            "initiate: expected status SUCCESS, seen {} ({:?})",
            c.status,
            short(&c.body)
        ));
    }
    let r = block_results(
        "initiate",
        &c,
        |b| match b {
            CompletionBody::Initiate(v) => Some(v),
            _ => None,
        },
        n,
    )?;
    all_success("initiate", r)?;
    let mut handles = Vec::with_capacity(n);
    for (i, b) in r.iter().enumerate() {
        let h = b
            .handle
            .ok_or_else(|| format!("initiate: block {i} SUCCESS but no handle (C-040)"))?;
        if h.layer() != Some(layer_of(refs[i])) {
            return Err(format!(
                "initiate: block {i} ({:?}) got handle {:#x} of layer {:?}",
                refs[i],
                h.0,
                h.layer()
            ));
        }
        if b.state_type != tree.blocks[i].state_type {
            return Err(format!(
                "initiate: block {i} result echoes type {:?}, request had {:?}",
                b.state_type, tree.blocks[i].state_type
            ));
        }
        handles.push(h);
    }
    let mut sorted = handles.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != n {
        return Err(format!(
            "initiate: {} distinct handles for {n} objects",
            sorted.len()
        ));
    }
    Ok(Offloaded {
        set: set.clone(),
        tree,
        refs,
        handles,
    })
}

/// Query every object with its full type and compare every field with the expectation.
pub fn query_matches(s: &mut ControlSession, off: &Offloaded) -> Step<String> {
    let q = objects::query_all(&off.tree, &off.handles);
    let c = call(s, "query", RequestBody::Query(q.clone()))?;
    if c.status != NdisStatus::SUCCESS {
        return Err(format!("query: expected SUCCESS, seen {}", c.status));
    }
    let r = block_results(
        "query",
        &c,
        |b| match b {
            CompletionBody::Query(v) => Some(v),
            _ => None,
        },
        q.blocks.len(),
    )?;
    all_success("query", r)?;
    for (i, b) in r.iter().enumerate() {
        let expected = QueriedState::select(q.blocks[i].state_type, &off.set.object(off.refs[i]));
        if b.state != Some(expected) {
            return Err(format!(
                "query: block {i} ({:?}): expected {expected:?}, seen {:?}",
                off.refs[i], b.state
            ));
        }
    }
    Ok(format!("{} objects match field by field", r.len()))
}

/// Query only one class (const / cached / delegated) of a few objects: the device returns
/// exactly the structures the Type names (C-076).
pub fn query_by_class(s: &mut ControlSession, off: &Offloaded) -> Step<String> {
    use chimney_abi::{IpVersion, StateClass};
    let picks = [
        (ObjectRef::Neighbor, StateClass::Cached),
        (ObjectRef::Path(1), StateClass::Const),
        (ObjectRef::Tcp(0), StateClass::Delegated),
        (ObjectRef::Tcp(1), StateClass::Const),
    ];
    for (r, class) in picks {
        let obj = off.set.object(r);
        let ip = match &obj {
            ObjectState::Path(p) => p.konst.ip_version(),
            _ => IpVersion::V4,
        };
        let ty = OffloadStateType::of(obj.layer(), ip, class);
        let tree = Tree {
            blocks: vec![Block {
                state_type: ty,
                next: None,
                dependent: None,
                host_context: host_context(r),
                body: RefBlock::Object(off.handle(r)),
            }],
        };
        let c = call(s, "query by class", RequestBody::Query(tree))?;
        let res = block_results(
            "query by class",
            &c,
            |b| match b {
                CompletionBody::Query(v) => Some(v),
                _ => None,
            },
            1,
        )?;
        let expected = QueriedState::select(ty, &obj);
        if res[0].state != Some(expected) || res[0].status != NdisStatus::SUCCESS {
            return Err(format!(
                "query {r:?} as {ty:?}: expected SUCCESS {expected:?}, seen {} {:?}",
                res[0].status, res[0].state
            ));
        }
    }
    Ok("const/cached/delegated selected by Type".to_string())
}

/// Update cached variables of every object (neighbor reachability, path MTU, TCP TTL and
/// keepalive), then query them back. Returns the offload with the new expectations.
pub fn update_cached(s: &mut ControlSession, off: &Offloaded) -> Step<Offloaded> {
    let mut next = off.clone();
    next.set.neighbor.cached.host_reachability_delta += 1;
    for p in &mut next.set.paths {
        p.cached.path_mtu = 1400;
    }
    for (_, t) in &mut next.set.tcp {
        t.cached.ttl_or_hop_limit = 33;
        t.cached.ka_interval += 17;
    }
    let tree = objects::reference_tree(&off.tree, &off.handles, |i, h| {
        let cached = match next.set.object(off.refs[i]) {
            ObjectState::Neighbor(n) => CachedState::Neighbor(n.cached),
            ObjectState::Path(p) => CachedState::Path(p.cached),
            ObjectState::Tcp(t) => CachedState::Tcp(t.cached),
        };
        let ty = cached_type(&next.set.object(off.refs[i]));
        (
            ty,
            UpdateBlock::Object {
                handle: h,
                cached: Some(cached),
            },
        )
    });
    let n = tree.blocks.len();
    let c = call(s, "update", RequestBody::Update(tree))?;
    if c.status != NdisStatus::SUCCESS {
        return Err(format!("update: expected SUCCESS, seen {}", c.status));
    }
    let r = block_results(
        "update",
        &c,
        |b| match b {
            CompletionBody::Update(v) => Some(v),
            _ => None,
        },
        n,
    )?;
    all_success("update", r)?;
    query_matches(s, &next).map_err(|e| format!("after update: {e}"))?;
    Ok(next)
}

fn cached_type(o: &ObjectState) -> OffloadStateType {
    use chimney_abi::{IpVersion, StateClass};
    let ip = match o {
        ObjectState::Path(p) => p.konst.ip_version(),
        _ => IpVersion::V4,
    };
    OffloadStateType::of(o.layer(), ip, StateClass::Cached)
}

/// An update whose block says TcpConst (const variables) is refused with
/// ConstUpdateRefused naming the block, and changes nothing (C-023).
pub fn const_update_refused(s: &mut ControlSession, off: &Offloaded) -> Step<String> {
    let target = ObjectRef::Tcp(0);
    let ObjectState::Tcp(t) = off.set.object(target) else {
        return Err("fixture has no TCP object 0".to_string());
    };
    let mut cached = t.cached;
    cached.ttl_or_hop_limit = 1;
    let tree = Tree {
        blocks: vec![Block {
            state_type: OffloadStateType::TcpCached,
            next: None,
            dependent: None,
            host_context: host_context(target),
            body: UpdateBlock::Object {
                handle: off.handle(target),
                cached: Some(CachedState::Tcp(cached)),
            },
        }],
    };
    let mut bytes = Request {
        request_id: 0,
        body: RequestBody::Update(tree),
    }
    .encode();
    // Request header 16 + tree header 8: block 0's state_type byte. Say "const".
    bytes[24] = OffloadStateType::TcpConst as u8;
    let c = s
        .call_bytes(&bytes, &[])
        .map_err(|e| format!("const update: {e}"))?;
    let e = expect_error("const update", &c, Reason::ConstUpdateRefused)?;
    if e.block != Some(0) {
        return Err(format!(
            "const update: expected the error to name block 0, seen {:?} field {:?}",
            e.block, e.field
        ));
    }
    query_matches(s, off).map_err(|e| format!("after refused const update: {e}"))?;
    Ok(format!("refused: {:?} block 0 field {}", e.reason, e.field))
}

/// Invalidate the neighbor: SUCCESS; the objects stay offloaded (the OT keeps owning an
/// invalidated object until it is terminated) and can still be queried.
pub fn invalidate_neighbor(s: &mut ControlSession, off: &Offloaded) -> Step<String> {
    let tree = Tree {
        blocks: vec![Block {
            state_type: OffloadStateType::Neighbor,
            next: None,
            dependent: None,
            host_context: host_context(ObjectRef::Neighbor),
            body: RefBlock::Object(off.handle(ObjectRef::Neighbor)),
        }],
    };
    let c = call(s, "invalidate", RequestBody::Invalidate(tree))?;
    let r = block_results(
        "invalidate",
        &c,
        |b| match b {
            CompletionBody::Invalidate(v) => Some(v),
            _ => None,
        },
        1,
    )?;
    if c.status != NdisStatus::SUCCESS || r[0].status != NdisStatus::SUCCESS {
        return Err(format!(
            "invalidate: expected SUCCESS/SUCCESS, seen {}/{}",
            c.status, r[0].status
        ));
    }
    // C-101: every TCP connection depending on the invalidated neighbor gets exactly one
    // upload request, TcpIndicateRetrieve / InvalidState, naming it by handle and
    // host_context.
    let mut expected: std::collections::BTreeMap<u64, u64> = off
        .refs
        .iter()
        .zip(&off.handles)
        .filter(|(r, _)| matches!(r, ObjectRef::Tcp(_)))
        .map(|(r, h)| (h.0, host_context(*r)))
        .collect();
    let want = expected.len();
    for n in 0..want {
        let e = s
            .next_event()
            .map_err(|e| format!("invalidate: event {n} of {want} expected: {e}"))?;
        let h = e.handle.map_or(0, |h| h.0);
        let ok = e.class == chimney_abi::EventClass::TcpEvent
            && e.code == chimney_abi::event::tcp_event::RETRIEVE
            && e.info == chimney_abi::event::upload_reason::INVALID_STATE
            && expected.get(&h) == Some(&e.host_context);
        if !ok {
            return Err(format!(
                "invalidate: expected TcpIndicateRetrieve/InvalidState for one of the \
                 {} remaining connections, seen {e:?}",
                expected.len()
            ));
        }
        expected.remove(&h);
    }
    query_matches(s, off).map_err(|e| format!("after invalidate: {e}"))?;
    Ok(format!(
        "neighbor invalidated, {want} upload requests (C-101), still queryable"
    ))
}

/// After invalidation the host does not update the object (C-094) and nothing new is
/// linked to it: both are refused with ObjectInvalidated, and the state is unchanged.
pub fn invalidated_neighbor_refuses_update_and_linking(
    s: &mut ControlSession,
    off: &Offloaded,
) -> Step<String> {
    let nh = off.handle(ObjectRef::Neighbor);
    let mut cached = off.set.neighbor.cached;
    cached.host_reachability_delta += 99;
    let c = call(
        s,
        "update of invalidated neighbor",
        RequestBody::Update(Tree {
            blocks: vec![one_block(
                OffloadStateType::NeighborCached,
                host_context(ObjectRef::Neighbor),
                UpdateBlock::Object {
                    handle: nh,
                    cached: Some(CachedState::Neighbor(cached)),
                },
            )],
        }),
    )?;
    expect_error(
        "update of an invalidated neighbor (C-094)",
        &c,
        Reason::ObjectInvalidated,
    )?;
    let ObjectState::Path(path) = off.set.object(ObjectRef::Path(0)) else {
        unreachable!("ObjectRef::Path always names a path");
    };
    let mut root = one_block(OffloadStateType::Neighbor, 1, InitiateBlock::Linker(nh));
    root.dependent = Some(1);
    let tree = Tree {
        blocks: vec![
            root,
            one_block(
                OffloadStateType::Ip4,
                2,
                InitiateBlock::New(ObjectState::Path(path)),
            ),
        ],
    };
    let c = call(
        s,
        "link to invalidated neighbor",
        RequestBody::Initiate(tree),
    )?;
    expect_error(
        "linker to an invalidated neighbor",
        &c,
        Reason::ObjectInvalidated,
    )?;
    query_matches(s, off).map_err(|e| format!("after refused requests: {e}"))?;
    Ok("update and linking refused with ObjectInvalidated, state unchanged".into())
}

/// Terminating a path while its TCP objects stay offloaded is refused (C-110), as is a
/// tree naming one object twice; nothing is terminated by either.
pub fn terminate_misuse_refused(s: &mut ControlSession, off: &Offloaded) -> Step<String> {
    let ph = off.handle(ObjectRef::Path(0));
    let c = call(
        s,
        "terminate path with dependents",
        RequestBody::Terminate(Tree {
            blocks: vec![one_block(
                OffloadStateType::Ip4,
                host_context(ObjectRef::Path(0)),
                TerminateBlock::Object {
                    handle: ph,
                    return_delegated: true,
                },
            )],
        }),
    )?;
    let e = expect_error(
        "terminate of a path with dependents (C-110)",
        &c,
        Reason::HasDependents,
    )?;
    let th = off.handle(ObjectRef::Tcp(0));
    let body = TerminateBlock::Object {
        handle: th,
        return_delegated: true,
    };
    let mut a = one_block(OffloadStateType::Tcp, 1, body);
    a.next = Some(1);
    let b = one_block(OffloadStateType::Tcp, 1, body);
    let c = call(
        s,
        "terminate the same TCP twice",
        RequestBody::Terminate(Tree { blocks: vec![a, b] }),
    )?;
    let e2 = expect_error(
        "one object referenced twice",
        &c,
        Reason::DuplicateReference,
    )?;
    query_matches(s, off).map_err(|e| format!("after refused terminates: {e}"))?;
    Ok(format!(
        "{:?}, {:?}; nothing terminated",
        e.reason, e2.reason
    ))
}

/// Terminate everything in one tree asking for delegated state back; compare it with
/// what was offloaded (C-111). Afterwards the handles are stale.
pub fn terminate_matches(s: &mut ControlSession, off: &Offloaded) -> Step<String> {
    let tree = objects::terminate_all(&off.tree, &off.handles);
    let n = tree.blocks.len();
    let c = call(s, "terminate", RequestBody::Terminate(tree))?;
    if c.status != NdisStatus::SUCCESS {
        return Err(format!(
            "terminate: expected SUCCESS, seen {} ({})",
            c.status,
            short(&c.body)
        ));
    }
    let r = block_results(
        "terminate",
        &c,
        |b| match b {
            CompletionBody::Terminate(v) => Some(v),
            _ => None,
        },
        n,
    )?;
    all_success("terminate", r)?;
    for (i, b) in r.iter().enumerate() {
        let expected = match off.set.object(off.refs[i]) {
            ObjectState::Neighbor(x) => DelegatedState::Neighbor(x.delegated),
            ObjectState::Path(x) => DelegatedState::Path(x.delegated),
            ObjectState::Tcp(x) => DelegatedState::Tcp(x.delegated),
        };
        if b.state != Some(expected) {
            return Err(format!(
                "terminate: block {i} ({:?}): expected delegated {expected:?}, seen {:?}",
                off.refs[i], b.state
            ));
        }
    }
    Ok(format!("{n} objects terminated, delegated state identical"))
}

/// A request naming a terminated object is refused with StaleHandle.
pub fn terminated_handle_refused(s: &mut ControlSession, off: &Offloaded) -> Step<String> {
    let r = ObjectRef::Tcp(0);
    let tree = Tree {
        blocks: vec![Block {
            state_type: OffloadStateType::Tcp,
            next: None,
            dependent: None,
            host_context: host_context(r),
            body: RefBlock::Object(off.handle(r)),
        }],
    };
    let c = call(s, "query terminated", RequestBody::Query(tree))?;
    let e = expect_error("query of a terminated handle", &c, Reason::StaleHandle)?;
    Ok(format!("refused: {:?} field {}", e.reason, e.field))
}

/// Proof of life after an error: initiating a fresh neighbor succeeds, and terminating it
/// again leaves the table as it was.
pub fn still_serving(s: &mut ControlSession, set: &OffloadSet) -> Step<()> {
    let tree = Tree {
        blocks: vec![Block {
            state_type: OffloadStateType::Neighbor,
            next: None,
            dependent: None,
            host_context: 0xA11CE,
            body: InitiateBlock::New(ObjectState::Neighbor(set.neighbor)),
        }],
    };
    let c = call(s, "follow-up initiate", RequestBody::Initiate(tree))?;
    let h = match &c.body {
        CompletionBody::Initiate(v)
            if c.status == NdisStatus::SUCCESS
                && v.len() == 1
                && v[0].status == NdisStatus::SUCCESS =>
        {
            v[0].handle
                .ok_or("follow-up initiate: SUCCESS without a handle")?
        }
        _ => {
            return Err(format!(
                "follow-up initiate after an error: expected SUCCESS, seen {} {}",
                c.status,
                short(&c.body)
            ))
        }
    };
    let t = Tree {
        blocks: vec![Block {
            state_type: OffloadStateType::Neighbor,
            next: None,
            dependent: None,
            host_context: 0xA11CE,
            body: TerminateBlock::Object {
                handle: h,
                return_delegated: false,
            },
        }],
    };
    let c = call(s, "follow-up terminate", RequestBody::Terminate(t))?;
    if c.status != NdisStatus::SUCCESS {
        return Err(format!(
            "follow-up terminate: expected SUCCESS, seen {} {}",
            c.status,
            short(&c.body)
        ));
    }
    Ok(())
}

/// The whole (b) sequence; one summary line per step.
pub fn run_sequence(
    s: &mut ControlSession,
    set: &OffloadSet,
    mut record: impl FnMut(&'static str, Step<String>),
) -> bool {
    let off = match offload(s, set) {
        Ok(o) => {
            record(
                "initiate tree",
                Ok(format!(
                    "{} blocks (1 neighbor, {} paths, {} TCP), seed {}",
                    o.handles.len(),
                    set.paths.len(),
                    set.tcp.len(),
                    set.seed
                )),
            );
            o
        }
        Err(e) => {
            record("initiate tree", Err(e));
            return false;
        }
    };
    let mut ok = true;
    let mut step = |name, r: Step<String>| {
        ok &= r.is_ok();
        record(name, r);
    };
    step("query field by field", query_matches(s, &off));
    step("query by class", query_by_class(s, &off));
    step(
        "placeholders and linkers",
        placeholders_and_linkers(s, &off),
    );
    let off = match update_cached(s, &off) {
        Ok(n) => {
            step(
                "update cached",
                Ok("all blocks SUCCESS, query shows new values".into()),
            );
            n
        }
        Err(e) => {
            step("update cached", Err(e));
            off
        }
    };
    step("const update refused", const_update_refused(s, &off));
    step("invalidate neighbor", invalidate_neighbor(s, &off));
    step(
        "invalidated: update/link refused",
        invalidated_neighbor_refuses_update_and_linking(s, &off),
    );
    step(
        "terminate misuse refused",
        terminate_misuse_refused(s, &off),
    );
    step("terminate all", terminate_matches(s, &off));
    step(
        "terminated handle refused",
        terminated_handle_refused(s, &off),
    );
    step(
        "device still serving",
        still_serving(s, set).map(|_| "fresh initiate + terminate SUCCESS".into()),
    );
    ok
}

/// Every bad-input case, each followed by a valid request that must succeed.
pub fn run_bad_input(
    s: &mut ControlSession,
    set: &OffloadSet,
    mut record: impl FnMut(&'static str, Step<String>),
) -> bool {
    type Case = fn(&mut ControlSession, &OffloadSet) -> Step<String>;
    let cases: [(&'static str, Case); 11] = [
        (
            "bad: descriptor outside RAM",
            bad_input::descriptor_outside_memory,
        ),
        ("bad: writable descriptor", bad_input::writable_descriptor),
        ("bad: chain too short", bad_input::chain_too_short),
        ("bad: unknown opcode", bad_input::unknown_opcode),
        ("bad: truncated record", bad_input::truncated_record),
        ("bad: cycle / layer order", bad_input::bad_trees),
        ("bad: unknown handle", bad_input::unknown_handle),
        (
            "bad: handle of wrong layer",
            bad_input::handle_of_wrong_layer,
        ),
        ("bad: terminated handle", bad_input::terminated_handle),
        ("bad: descriptor loop", bad_input::descriptor_loop),
        ("bad: chain too long", bad_input::chain_too_long),
    ];
    let mut ok = true;
    for (name, case) in cases {
        let r = case(s, set);
        ok &= r.is_ok();
        record(name, r);
    }
    ok
}

fn initiate_results(
    what: &str,
    c: &Completion,
    n: usize,
) -> Step<Vec<BlockResult<std::convert::Infallible>>> {
    block_results(
        what,
        c,
        |b| match b {
            CompletionBody::Initiate(v) => Some(v),
            _ => None,
        },
        n,
    )
    .cloned()
}

fn expect_statuses<S>(what: &str, r: &[BlockResult<S>], expected: &[NdisStatus]) -> Step<()> {
    let seen: Vec<NdisStatus> = r.iter().map(|b| b.status).collect();
    if seen != expected {
        return Err(format!(
            "{what}: expected block statuses {expected:?}, seen {seen:?}"
        ));
    }
    Ok(())
}

fn one_block<B>(state_type: OffloadStateType, host_context: u64, body: B) -> Block<B> {
    Block {
        state_type,
        next: None,
        dependent: None,
        host_context,
        body,
    }
}

/// A TCP object like the fixture's first one, with local port `port` (below 1024: the
/// fixture uses 1024 and up, so the 4-tuple is new).
fn extra_tcp(off: &Offloaded, port: u16, closed: bool) -> ObjectState {
    let ObjectState::Tcp(mut t) = off.set.object(ObjectRef::Tcp(0)) else {
        unreachable!("ObjectRef::Tcp always names a TCP object");
    };
    t.konst.local_port = port;
    if closed {
        t.delegated.state = chimney_abi::TcpConnectionState::Closed;
    }
    ObjectState::Tcp(t)
}

/// Terminate a flat list of objects of one layer (no delegated state wanted).
fn terminate_list(
    s: &mut ControlSession,
    what: &str,
    ty: OffloadStateType,
    handles: &[DeviceHandle],
) -> Step<()> {
    let blocks = handles
        .iter()
        .enumerate()
        .map(|(i, h)| Block {
            state_type: ty,
            next: (i + 1 < handles.len()).then_some(i as u32 + 1),
            dependent: None,
            host_context: 0,
            body: TerminateBlock::Object {
                handle: *h,
                return_delegated: false,
            },
        })
        .collect();
    let c = call(s, what, RequestBody::Terminate(Tree { blocks }))?;
    if c.status != NdisStatus::SUCCESS {
        return Err(format!(
            "{what}: expected SUCCESS, seen {} {}",
            c.status,
            short(&c.body)
        ));
    }
    Ok(())
}

/// Placeholders and linkers (C-036..C-038) on top of an offloaded fixture; everything added
/// here is terminated again, so the fixture's objects are as before.
pub fn placeholders_and_linkers(s: &mut ControlSession, off: &Offloaded) -> Step<String> {
    use OffloadStateType as T;
    // C-036: a lone placeholder is SUCCESS and offloads nothing.
    let c = call(
        s,
        "lone placeholder",
        RequestBody::Initiate(Tree {
            blocks: vec![one_block(T::Neighbor, 1, InitiateBlock::Placeholder)],
        }),
    )?;
    let r = initiate_results("lone placeholder (C-036)", &c, 1)?;
    expect_statuses("lone placeholder (C-036)", &r, &[NdisStatus::SUCCESS])?;
    if r[0].handle.is_some() {
        return Err("lone placeholder (C-036): expected no handle, seen one".into());
    }

    // C-036: the placeholder's links are followed: a new neighbor next to it is offloaded.
    let mut root = one_block(T::Neighbor, 2, InitiateBlock::Placeholder);
    root.next = Some(1);
    let tree = Tree {
        blocks: vec![
            root,
            one_block(
                T::Neighbor,
                3,
                InitiateBlock::New(ObjectState::Neighbor(off.set.neighbor)),
            ),
        ],
    };
    let c = call(s, "placeholder with next", RequestBody::Initiate(tree))?;
    let r = initiate_results("placeholder with next (C-036)", &c, 2)?;
    expect_statuses(
        "placeholder with next (C-036)",
        &r,
        &[NdisStatus::SUCCESS, NdisStatus::SUCCESS],
    )?;
    let extra_neighbor = r[1]
        .handle
        .ok_or("placeholder with next: new neighbor SUCCESS without handle")?;

    // C-037: a linker to the fixture's neighbor gets a new path, which gets a new TCP.
    let ObjectState::Path(mut path) = off.set.object(ObjectRef::Path(0)) else {
        unreachable!("ObjectRef::Path always names a path");
    };
    path.konst = chimney_abi::PathConst::V4 {
        source: chimney_wire::GUEST_IPV4,
        destination: std::net::Ipv4Addr::new(192, 0, 2, 3),
    };
    let mut root = one_block(
        T::Neighbor,
        4,
        InitiateBlock::Linker(off.handle(ObjectRef::Neighbor)),
    );
    root.dependent = Some(1);
    let mut p = one_block(T::Ip4, 5, InitiateBlock::New(ObjectState::Path(path)));
    p.dependent = Some(2);
    let tree = Tree {
        blocks: vec![
            root,
            p,
            one_block(T::Tcp, 6, InitiateBlock::New(extra_tcp(off, 1000, false))),
        ],
    };
    let c = call(s, "linker", RequestBody::Initiate(tree))?;
    let r = initiate_results("linker (C-037)", &c, 3)?;
    expect_statuses("linker (C-037)", &r, &[NdisStatus::SUCCESS; 3])?;
    if r[0].handle.is_some() {
        return Err("linker (C-037): a linker block must not get a new handle".into());
    }
    let new_path = r[1].handle.ok_or("linker: new path without handle")?;
    let new_tcp = r[2].handle.ok_or("linker: new TCP without handle")?;
    let q = call(
        s,
        "query linked TCP",
        RequestBody::Query(Tree {
            blocks: vec![one_block(T::Tcp, 6, RefBlock::Object(new_tcp))],
        }),
    )?;
    let expected = QueriedState::select(T::Tcp, &extra_tcp(off, 1000, false));
    match &q.body {
        CompletionBody::Query(v) if v.len() == 1 && v[0].state == Some(expected) => {}
        other => {
            return Err(format!(
                "query of the linked TCP: expected {expected:?}, seen {}",
                short(other)
            ))
        }
    }

    // C-038: linker to path 0 with one good and one failing (Closed, C-070) TCP: partial.
    let mut root = one_block(
        T::Ip4,
        7,
        InitiateBlock::Linker(off.handle(ObjectRef::Path(0))),
    );
    root.dependent = Some(1);
    let mut good = one_block(T::Tcp, 8, InitiateBlock::New(extra_tcp(off, 1001, false)));
    good.next = Some(2);
    let tree = Tree {
        blocks: vec![
            root,
            good,
            one_block(T::Tcp, 9, InitiateBlock::New(extra_tcp(off, 1002, true))),
        ],
    };
    let c = call(s, "linker partial", RequestBody::Initiate(tree))?;
    let r = initiate_results("linker, one dependent fails (C-038)", &c, 3)?;
    expect_statuses(
        "linker, one dependent fails (C-038)",
        &r,
        &[
            NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
            NdisStatus::SUCCESS,
            NdisStatus::FAILURE,
        ],
    )?;
    if r[2].handle.is_some() {
        return Err("C-040: a failed block must not get a handle".into());
    }
    let partial_tcp = r[1]
        .handle
        .ok_or("linker partial: good TCP without handle")?;

    // C-038: every dependent fails: the linker is FAILURE.
    let mut root = one_block(
        T::Ip4,
        10,
        InitiateBlock::Linker(off.handle(ObjectRef::Path(0))),
    );
    root.dependent = Some(1);
    let tree = Tree {
        blocks: vec![
            root,
            one_block(T::Tcp, 11, InitiateBlock::New(extra_tcp(off, 1003, true))),
        ],
    };
    let c = call(s, "linker all fail", RequestBody::Initiate(tree))?;
    let r = initiate_results("linker, all dependents fail (C-038)", &c, 2)?;
    expect_statuses(
        "linker, all dependents fail (C-038)",
        &r,
        &[NdisStatus::FAILURE, NdisStatus::FAILURE],
    )?;

    // Clean up: TCPs, then the new path, then the extra neighbor.
    terminate_list(s, "cleanup TCP", T::Tcp, &[new_tcp, partial_tcp])?;
    terminate_list(s, "cleanup path", T::Ip4, &[new_path])?;
    terminate_list(s, "cleanup neighbor", T::Neighbor, &[extra_neighbor])?;
    Ok("C-036 placeholder, C-037 linker, C-038 partial/failure as specified".into())
}

/// Bad input through the real socket: each case gets an ERROR completion with the reason
/// and the device keeps serving (a fresh initiate + terminate succeeds right after).
pub mod bad_input {
    use super::*;
    use chimney_miniport::Buffer;

    fn follow_up(s: &mut ControlSession, set: &OffloadSet, what: &str) -> Step<()> {
        still_serving(s, set).map_err(|e| format!("after {what}: {e}"))
    }

    fn negotiate_bytes() -> Vec<u8> {
        Request {
            request_id: 0,
            body: RequestBody::Negotiate(chimney_abi::Negotiate {
                min_version: 1,
                max_version: 1,
            }),
        }
        .encode()
    }

    fn neighbor_initiate_bytes(set: &OffloadSet) -> Vec<u8> {
        Request {
            request_id: 0,
            body: RequestBody::Initiate(Tree {
                blocks: vec![one_block(
                    OffloadStateType::Neighbor,
                    1,
                    InitiateBlock::New(ObjectState::Neighbor(set.neighbor)),
                )],
            }),
        }
        .encode()
    }

    /// A descriptor whose buffer lies beyond the end of guest RAM.
    pub fn descriptor_outside_memory(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let id = s.channel.allocate_request_id();
        let p = s.platform_arc();
        let beyond = p.ram_end() + 0x10_0000;
        let head = s
            .channel
            .submit_raw(
                &*p,
                id,
                &[Buffer {
                    addr: beyond,
                    len: 64,
                }],
                &[],
            )
            .map_err(|e| e.to_string())?;
        let c = s.wait(id).map_err(|e| e.to_string())?;
        let e = expect_error(
            "descriptor outside memory",
            &c,
            Reason::DescriptorOutOfMemory,
        )?;
        if c.tx_head != head {
            return Err(format!("expected tx_head {head}, seen {}", c.tx_head));
        }
        follow_up(s, set, "descriptor outside memory")?;
        Ok(format!("{:?} ({})", e.reason, e.field))
    }

    /// A request chain carrying a device-writable descriptor.
    pub fn writable_descriptor(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let id = s.channel.allocate_request_id();
        let mut bytes = negotiate_bytes();
        // Our id in the header: the device can read it and echoes it.
        bytes[8..16].copy_from_slice(&id.to_le_bytes());
        let p = s.platform_arc();
        let req = p
            .alloc_with(&bytes, bytes.len())
            .map_err(|e| e.to_string())?;
        let out = p.alloc_with(&[], 64).map_err(|e| e.to_string())?;
        s.channel
            .submit_raw(
                &*p,
                id,
                &[Buffer {
                    addr: req.addr,
                    len: bytes.len() as u32,
                }],
                &[Buffer {
                    addr: out.addr,
                    len: 64,
                }],
            )
            .map_err(|e| e.to_string())?;
        let c = s.wait(id).map_err(|e| e.to_string())?;
        let e = expect_error("writable descriptor", &c, Reason::WritableDescriptor)?;
        follow_up(s, set, "writable descriptor")?;
        Ok(format!("{:?} ({})", e.reason, e.field))
    }

    /// A chain shorter than a request header, and one shorter than its declared length.
    pub fn chain_too_short(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let c = s
            .call_bytes(&[1, 0, 0, 0, 24, 0, 0, 0], &[])
            .map_err(|e| e.to_string())?;
        expect_error("8-byte chain", &c, Reason::ChainTooShort)?;
        follow_up(s, set, "8-byte chain")?;
        let mut bytes = negotiate_bytes();
        bytes[4..8].copy_from_slice(&100u32.to_le_bytes());
        let c = s.call_bytes(&bytes, &[8]).map_err(|e| e.to_string())?;
        let e = expect_error(
            "chain shorter than header.length",
            &c,
            Reason::ChainTooShort,
        )?;
        follow_up(s, set, "short chain")?;
        Ok(format!("{:?} ({})", e.reason, e.field))
    }

    pub fn unknown_opcode(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let mut bytes = negotiate_bytes();
        bytes[0..2].copy_from_slice(&0x77u16.to_le_bytes());
        let c = s.call_bytes(&bytes, &[]).map_err(|e| e.to_string())?;
        let e = expect_error("unknown opcode", &c, Reason::UnknownOpcode)?;
        if !e.header_valid || c.opcode != 0x77 {
            return Err(format!(
                "unknown opcode: expected header_valid with opcode echo 0x77, seen {} / {:#x}",
                e.header_valid, c.opcode
            ));
        }
        follow_up(s, set, "unknown opcode")?;
        Ok(format!("{:?} ({})", e.reason, e.field))
    }

    /// A record whose declared length matches the chain but cuts the state short.
    pub fn truncated_record(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let mut bytes = neighbor_initiate_bytes(set);
        bytes.truncate(bytes.len() - 4);
        let len = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&len.to_le_bytes());
        let c = s.call_bytes(&bytes, &[]).map_err(|e| e.to_string())?;
        let e = expect_error("truncated record", &c, Reason::Truncated)?;
        follow_up(s, set, "truncated record")?;
        Ok(format!("{:?} ({})", e.reason, e.field))
    }

    /// Trees whose links form a cycle, or go down a layer.
    pub fn bad_trees(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let mut a = one_block(OffloadStateType::Neighbor, 1, RefBlock::Placeholder);
        a.dependent = Some(1);
        let mut b = one_block(OffloadStateType::Ip4, 2, RefBlock::Placeholder);
        b.next = Some(1);
        let c = s
            .call(RequestBody::Query(Tree { blocks: vec![a, b] }))
            .map_err(|e| e.to_string())?;
        let e1 = expect_error("tree with a cycle", &c, Reason::LinkCycle)?;
        follow_up(s, set, "cycle")?;

        let mut a = one_block(OffloadStateType::Tcp, 1, RefBlock::Placeholder);
        a.dependent = Some(1);
        let b = one_block(OffloadStateType::Neighbor, 2, RefBlock::Placeholder);
        let c = s
            .call(RequestBody::Query(Tree { blocks: vec![a, b] }))
            .map_err(|e| e.to_string())?;
        let e2 = expect_error("TCP above neighbor", &c, Reason::LayerOrder)?;
        follow_up(s, set, "layer order")?;
        Ok(format!(
            "{:?} (block {:?}), {:?} (block {:?})",
            e1.reason, e1.block, e2.reason, e2.block
        ))
    }

    /// A chain whose second descriptor points back at the first (a loop): the device's
    /// chain walk must stop and refuse it.
    pub fn descriptor_loop(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let id = s.channel.allocate_request_id();
        let mut bytes = negotiate_bytes();
        bytes[8..16].copy_from_slice(&id.to_le_bytes());
        let p = s.platform_arc();
        let req = p
            .alloc_with(&bytes, bytes.len())
            .map_err(|e| e.to_string())?;
        let parts = [
            Buffer {
                addr: req.addr,
                len: 8,
            },
            Buffer {
                addr: req.addr + 8,
                len: bytes.len() as u32 - 8,
            },
        ];
        s.channel
            .submit_tampered(&*p, id, &parts, |p, desc_table, head| {
                use chimney_miniport::Platform;
                // Descriptor layout: addr u64, len u32, flags u16, next u16.
                let head_next = p.read_u16(desc_table + 16 * u64::from(head) + 14)?;
                let second = desc_table + 16 * u64::from(head_next);
                p.write_u16(second + 12, 1)?; // VIRTQ_DESC_F_NEXT
                p.write_u16(second + 14, head)
            })
            .map_err(|e| e.to_string())?;
        let c = s.wait(id).map_err(|e| e.to_string())?;
        let e = expect_error("descriptor loop", &c, Reason::MalformedChain)?;
        follow_up(s, set, "descriptor loop")?;
        Ok(format!("{:?} ({})", e.reason, e.field))
    }

    /// A chain longer than the device's `max_request_length` (the same buffer 65 times).
    pub fn chain_too_long(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let id = s.channel.allocate_request_id();
        let p = s.platform_arc();
        let chunk = 64 << 10;
        let mut first = negotiate_bytes();
        first[8..16].copy_from_slice(&id.to_le_bytes());
        let buf = p.alloc_with(&first, chunk).map_err(|e| e.to_string())?;
        let parts = vec![
            Buffer {
                addr: buf.addr,
                len: chunk as u32,
            };
            65
        ];
        s.channel
            .submit_raw(&*p, id, &parts, &[])
            .map_err(|e| e.to_string())?;
        let c = s.wait(id).map_err(|e| e.to_string())?;
        let e = expect_error("65 x 64 KiB chain", &c, Reason::ChainTooLong)?;
        follow_up(s, set, "chain too long")?;
        Ok(format!("{:?} ({})", e.reason, e.field))
    }

    /// A neighbor's handle in a block whose Type says TCP.
    pub fn handle_of_wrong_layer(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let c = s
            .call(RequestBody::Initiate(Tree {
                blocks: vec![one_block(
                    OffloadStateType::Neighbor,
                    1,
                    InitiateBlock::New(ObjectState::Neighbor(set.neighbor)),
                )],
            }))
            .map_err(|e| e.to_string())?;
        let h = initiate_results("initiate neighbor", &c, 1)?[0]
            .handle
            .ok_or("initiate neighbor: no handle")?;
        let c = s
            .call(RequestBody::Query(Tree {
                blocks: vec![one_block(OffloadStateType::Tcp, 1, RefBlock::Object(h))],
            }))
            .map_err(|e| e.to_string())?;
        let e = expect_error("neighbor handle as TCP", &c, Reason::HandleLayerMismatch)?;
        terminate_list(s, "cleanup neighbor", OffloadStateType::Neighbor, &[h])?;
        follow_up(s, set, "handle of wrong layer")?;
        Ok(format!("{:?} ({})", e.reason, e.field))
    }

    /// A handle whose object was terminated (the slot's generation moved on).
    pub fn terminated_handle(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let off = offload(s, set)?;
        terminate_matches(s, &off)?;
        let r = terminated_handle_refused(s, &off)?;
        follow_up(s, set, "terminated handle")?;
        Ok(r)
    }

    /// A handle that never named anything.
    pub fn unknown_handle(s: &mut ControlSession, set: &OffloadSet) -> Step<String> {
        let bogus = DeviceHandle((1u64 << 62) | (0x3FFF_0000u64 << 32) | 0xFFFF);
        let c = s
            .call(RequestBody::Query(Tree {
                blocks: vec![one_block(
                    OffloadStateType::Neighbor,
                    1,
                    RefBlock::Object(bogus),
                )],
            }))
            .map_err(|e| e.to_string())?;
        let e = expect_error("unknown handle", &c, Reason::UnknownHandle)?;
        follow_up(s, set, "unknown handle")?;
        Ok(format!("{:?} ({})", e.reason, e.field))
    }
}
