//! What the state operations do to live connections: initiate imports new TCP objects into
//! the data path, query reads their live delegated state (C-076), invalidate/update stop or
//! restart transmission (C-100), terminate exports them (C-111, C-116) and raises the
//! UPLOAD_DATA event before the completion (ring-abi.md §16.4).

use crate::conversion;
use crate::data_path::{now, DataPath, Terminated};
use crate::state_manipulation::ObjectTable;
use chimney_abi::event::tcp_event;
use chimney_abi::{
    BlockResult, DelegatedState, DeviceHandle, Event, InitiateBlock, Layer, NdisStatus,
    ObjectState, RefBlock, TcpData, TerminateBlock, Tree,
};
use std::convert::Infallible;

/// After a successful `ObjectTable::initiate`: import every new TCP object. A connection the
/// engine refuses (bad state, data shorter than SndMax − SndUna, C-054) is removed again and
/// its block fails with FAILURE; the statuses above it are settled again, so its path reads
/// PARTIAL_SUCCESS (C-042).
pub fn after_initiate(
    table: &mut ObjectTable,
    dp: &mut DataPath,
    tree: &Tree<InitiateBlock>,
    data: &[TcpData],
    results: &mut [BlockResult<Infallible>],
) {
    let now = now();
    for (i, b) in tree.blocks.iter().enumerate() {
        if !matches!(b.body, InitiateBlock::New(ObjectState::Tcp(_))) {
            continue;
        }
        let Some(r) = results.get_mut(i) else {
            continue;
        };
        let Some(h) = r.handle else { continue };
        let Some((n, p, t, ctx)) = abi_tcp_state(table, h) else {
            continue;
        };
        let empty = TcpData::default();
        let d = data.iter().find(|d| d.block == i as u32).unwrap_or(&empty);
        if let Some(st) = dp.policy_mut().initiate(Layer::Tcp) {
            // The vendor policy refuses this connection (capacity, …).
            table.remove_tcp(h);
            r.status = st;
            r.handle = None;
            continue;
        }
        let export = conversion::to_export(&n, &p, &t, d);
        if let Err(e) = dp.offload(h, ctx, &export, now) {
            tracing::info!(handle = h.0, error = %e, "initiate: engine refused the connection");
            table.remove_tcp(h);
            r.status = e.initiate_status();
            r.handle = None;
            continue;
        }
        // Reachability bookkeeping of the neighbor it sends through (§4.2).
        if let Some((nh, nctx)) = table
            .tcp(h)
            .and_then(|t| table.path(t.path()))
            .and_then(|p| {
                table
                    .neighbor(p.neighbor())
                    .map(|o| (p.neighbor(), o.host_context()))
            })
        {
            dp.attach_neighbor(h, nh, nctx, n, now);
        }
    }
    ObjectTable::settle_statuses(tree, results);
    refresh_blocking(table, dp);
}

/// Before a query: copy live delegated TCP state and the neighbors' current
/// NicReachabilityDelta into the table (C-076, C-228).
pub fn before_query(table: &mut ObjectTable, dp: &DataPath, tree: &Tree<RefBlock>) {
    let now = now();
    for b in &tree.blocks {
        if let RefBlock::Object(h) = b.body {
            match h.layer() {
                Some(Layer::Tcp) => {
                    if let Some(d) = dp.delegated(now, h) {
                        table.set_tcp_delegated(h, d);
                    }
                }
                Some(Layer::Neighbor) => {
                    if let Some(nrd) = dp.nic_reachability_delta(h, now) {
                        table.set_neighbor_nrd(h, nrd);
                    }
                }
                _ => {}
            }
        }
    }
}

/// After a successful update: cached TCP variables reach the live engines (C-083..C-091)
/// and a neighbor's new HRD the reachability bookkeeping. A value the engine refuses
/// fails that block with FAILURE; the connection keeps running on its old values (C-092).
pub fn after_update(
    dp: &mut DataPath,
    tree: &Tree<chimney_abi::UpdateBlock>,
    results: &mut [BlockResult<Infallible>],
) {
    let now = now();
    for (b, r) in tree.blocks.iter().zip(results.iter_mut()) {
        let chimney_abi::UpdateBlock::Object {
            handle,
            cached: Some(cached),
        } = b.body
        else {
            continue;
        };
        match cached {
            chimney_abi::CachedState::Tcp(c) if dp.contains(handle) => {
                if let Err(e) = dp.update_cached(now, handle, &c) {
                    tracing::info!(handle = handle.0, error = %e, "update: engine refused");
                    r.status = NdisStatus::FAILURE;
                }
            }
            chimney_abi::CachedState::Neighbor(n) => dp.neighbor_updated(handle, n, now),
            _ => {}
        }
    }
}

/// After invalidate or update: a connection whose TCP, path or neighbor is invalid stops
/// transmitting at once; a valid one (again) may send (C-094, C-100).
pub fn refresh_blocking(table: &ObjectTable, dp: &mut DataPath) {
    for h in table.tcp_handles() {
        if dp.contains(h) {
            dp.set_blocked(h, !table.tcp_may_send(h));
        }
    }
}

/// Before `ObjectTable::terminate` removes them: export every offloaded TCP object named in
/// the tree. Returns the exported delegated states by handle and the UPLOAD_DATA events.
pub fn before_terminate(
    table: &ObjectTable,
    dp: &mut DataPath,
    tree: &Tree<TerminateBlock>,
) -> (Vec<(DeviceHandle, chimney_abi::TcpDelegated)>, Vec<Event>) {
    let now = now();
    let mut states = Vec::new();
    let mut events = Vec::new();
    for b in &tree.blocks {
        let TerminateBlock::Object { handle: h, .. } = b.body else {
            continue;
        };
        if h.layer() != Some(Layer::Tcp) || !dp.contains(h) {
            continue;
        }
        let ctx = table.tcp(h).map_or(0, |t| t.host_context());
        match dp.terminate(now, h) {
            Ok(Terminated::Live(export, data)) => {
                let d = conversion::tcp_delegated_from_ns(&export.tcp.delegated, 0, 0);
                states.push((h, d));
                if !data.send.is_empty() || !data.buffered.is_empty() {
                    let mut e = Event::tcp(h, ctx, tcp_event::UPLOAD_DATA, 0);
                    e.payload = chimney_abi::data_io::emit_upload_data(&data);
                    events.push(e);
                }
            }
            Ok(Terminated::Closed(last, data)) => {
                // Closed by a timeout or reset: the engine's last state (live SndUna, …),
                // not the one from offload time (C-111); State reads CLOSED. Data held at
                // the timeout travels back as for a live connection.
                let d = match last {
                    Some(ns) => Some(conversion::tcp_delegated_from_ns(&ns, 0, 0)),
                    None => table.tcp(h).map(|t| *t.delegated()),
                };
                if let Some(mut d) = d {
                    d.state = chimney_abi::TcpConnectionState::Closed;
                    states.push((h, d));
                }
                if !data.send.is_empty() || !data.buffered.is_empty() {
                    let mut e = Event::tcp(h, ctx, tcp_event::UPLOAD_DATA, 0);
                    e.payload = chimney_abi::data_io::emit_upload_data(&data);
                    events.push(e);
                }
            }
            Err(e) => tracing::warn!(handle = h.0, error = %e, "terminate: data path"),
        }
    }
    (states, events)
}

/// Patch the exported states into the terminate results (block order = tree order).
pub fn patch_terminate(
    tree: &Tree<TerminateBlock>,
    results: &mut [BlockResult<DelegatedState>],
    states: &[(DeviceHandle, chimney_abi::TcpDelegated)],
    dp: &mut DataPath,
) {
    let wrong = dp.policy_mut().terminate_status();
    for (b, r) in tree.blocks.iter().zip(results.iter_mut()) {
        let TerminateBlock::Object { handle, .. } = b.body else {
            continue;
        };
        if let (Some(DelegatedState::Tcp(d)), Some((_, live))) =
            (r.state.as_mut(), states.iter().find(|(h, _)| *h == handle))
        {
            *d = *live;
        }
        if let (Some(st), Some(Layer::Tcp)) = (wrong, handle.layer()) {
            // Deliberate firmware bug (breaks C-112).
            r.status = st;
        }
    }
}

/// The full ABI state of an offloaded TCP object and its path and neighbor, plus its host
/// context.
fn abi_tcp_state(
    table: &ObjectTable,
    h: DeviceHandle,
) -> Option<(
    chimney_abi::NeighborState,
    chimney_abi::PathState,
    chimney_abi::TcpState,
    u64,
)> {
    let t = table.tcp(h)?;
    let p = table.path(t.path())?;
    let n = table.neighbor(p.neighbor())?;
    Some((
        chimney_abi::NeighborState {
            konst: *n.konst(),
            cached: *n.cached(),
            delegated: *n.delegated(),
        },
        chimney_abi::PathState {
            konst: *p.konst(),
            cached: *p.cached(),
            delegated: *p.delegated(),
        },
        chimney_abi::TcpState {
            konst: *t.konst(),
            cached: *t.cached(),
            delegated: *t.delegated(),
        },
        t.host_context(),
    ))
}
