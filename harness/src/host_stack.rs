//! The host stack: a chimney-netstack engine on queue pair 0 (the NIC's non-offload path),
//! plus what moving one of its connections to the device and back takes: the initiate
//! request with the send/buffered data trailer (ring-abi.md §16.4) built from an engine
//! export, and the import of a terminated connection from its returned delegated state and
//! UPLOAD_DATA (DESIGN.md rule 5: one engine, two homes).
//!
//! The conversion between netstack's export structs and the ABI's state objects lives in
//! `chimney_device::conversion` (one copy for device and harness).

use std::sync::Arc;
use std::time::Duration;

use chimney_abi::data_io::{parse_upload_data, TcpData};
use chimney_abi::{
    CompletionBody, DelegatedState, DeviceHandle, NdisStatus, ObjectState, Request, RequestBody,
    TcpDelegated, TerminateBlock, TreeBuilder,
};
use chimney_device::conversion;
use chimney_device::data_path::{parse_key, tcp_segment, SwitchKey};
use chimney_miniport::NicQueues;
use chimney_netstack::{ConnHandle, ConnectionExport, Engine, EngineConfig, Instant};
use std::collections::HashMap;

use crate::control_session::ControlSession;
use crate::error::{HarnessError, Result};
use crate::vmm_platform::VmmPlatform;

/// The host's engine on queue pair 0.
pub struct HostStack {
    pub engine: Engine,
    nic: NicQueues,
    platform: Arc<VmmPlatform>,
    origin: std::time::Instant,
    /// 4-tuples of connections offloaded from this stack: their segments that still come
    /// up pair 0 are forwarded to the device (C-197), never answered with a RST.
    offloaded: HashMap<SwitchKey, DeviceHandle>,
    forwards: Vec<(DeviceHandle, Vec<u8>)>,
}

fn err(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Device(format!("host stack: {what}: {e}"))
}

impl HostStack {
    pub fn new(platform: Arc<VmmPlatform>, nic: NicQueues, cfg: EngineConfig) -> Result<Self> {
        let origin = std::time::Instant::now();
        let engine = Engine::new(cfg, Instant::ZERO).map_err(|e| err("engine", e))?;
        Ok(HostStack {
            engine,
            nic,
            platform,
            origin,
            offloaded: HashMap::new(),
            forwards: Vec::new(),
        })
    }

    /// Monotonic time of this stack.
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.origin.elapsed().as_micros() as u64)
    }

    /// One round: engine frames to pair 0 tx, frames from pair 0 rx (waiting up to `wait` for
    /// the first) into the engine, due timers. Returns the frames received.
    pub fn poll(&mut self, wait: Duration) -> Result<usize> {
        let now = self.now();
        self.flush_tx(now)?;
        let mut got = 0;
        let mut timeout = wait;
        while let Some(f) = self
            .nic
            .recv(&*self.platform, timeout)
            .map_err(|e| err("pair 0 rx", e))?
        {
            got += 1;
            if let Some(h) = parse_key(&f).and_then(|k| self.offloaded.get(&k)) {
                if let Some(seg) = tcp_segment(&f) {
                    self.forwards.push((*h, seg.to_vec()));
                }
                continue;
            }
            let _ = self.engine.handle_frame(self.now(), &f);
            timeout = Duration::ZERO;
            if got % 64 == 0 {
                self.flush_tx(self.now())?;
            }
        }
        let now = self.now();
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
        }
        self.flush_tx(now)?;
        Ok(got)
    }

    /// Segments of offloaded connections that came up pair 0: (TCP handle, segment from the
    /// TCP header on), to send as FORWARD requests on the connection's data pair (C-196).
    pub fn take_forwards(&mut self) -> Vec<(DeviceHandle, Vec<u8>)> {
        std::mem::take(&mut self.forwards)
    }

    fn flush_tx(&mut self, now: Instant) -> Result<()> {
        while let Some(t) = self.engine.poll_transmit(now) {
            let frame = t.frame.to_vec();
            let mut tries = 0;
            loop {
                match self.nic.send(&*self.platform, &frame) {
                    Ok(()) => break,
                    Err(chimney_miniport::nic::NicError::TxFull(_)) if tries < 1000 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    Err(e) => return Err(err("pair 0 tx", e)),
                }
            }
        }
        Ok(())
    }

    /// Offload `conn`: export it (owed ACK goes out first), send the initiate tree
    /// neighbor → path → TCP with the data trailer, wait for its completion. Returns the
    /// handles [TCP, path, neighbor] and what was exported.
    pub fn offload(
        &mut self,
        session: &mut ControlSession,
        conn: ConnHandle,
        host_context: u64,
    ) -> Result<([DeviceHandle; 3], ConnectionExport)> {
        let now = self.now();
        let export = self
            .engine
            .export(now, conn)
            .map_err(|e| err("export", e))?;
        self.flush_tx(now)?;
        let (mut n, p, t, mut data) = conversion::from_export(&export);
        // C-047: no software-configurable source MAC; all zero = the NIC's own.
        n.konst.dl_source_address = [0; 32];
        let mut b = TreeBuilder::new_object(host_context, ObjectState::Neighbor(n));
        let pb = b.new_dependent(0, host_context + 1, ObjectState::Path(p));
        let tb = b.new_dependent(pb, host_context + 2, ObjectState::Tcp(t));
        data.block = tb;
        let tree = b.build();
        let bytes = Request {
            request_id: 0x0ff1_0ad0,
            body: RequestBody::Initiate(tree),
        }
        .encode_with_data(&[data]);
        let c = session.call_bytes(&bytes, &[])?;
        let CompletionBody::Initiate(r) = &c.body else {
            return Err(err("initiate", format!("unexpected completion {c:?}")));
        };
        let handle = |i: u32| {
            r.get(i as usize)
                .filter(|r| r.status == NdisStatus::SUCCESS)
                .and_then(|r| r.handle)
                .ok_or_else(|| err("initiate", format!("block {i} failed: {r:?}")))
        };
        let handles = [handle(tb)?, handle(pb)?, handle(0)?];
        self.offloaded.insert(key_of(&export), handles[0]);
        Ok((handles, export))
    }

    /// Offload many connections to the same peer in one bulk tree: neighbor → path → one TCP
    /// block per connection (the Windows logo requirement: 1024 in one tree). Returns the TCP
    /// handles (in `conns` order), the path and neighbor handles, and the exports.
    pub fn offload_many(
        &mut self,
        session: &mut ControlSession,
        conns: &[ConnHandle],
        host_context: u64,
    ) -> Result<(Vec<DeviceHandle>, [DeviceHandle; 2], Vec<ConnectionExport>)> {
        let now = self.now();
        let mut exports = Vec::with_capacity(conns.len());
        for c in conns {
            exports.push(self.engine.export(now, *c).map_err(|e| err("export", e))?);
        }
        self.flush_tx(now)?;
        let first = exports
            .first()
            .ok_or_else(|| err("offload_many", "no connections"))?;
        let (mut n, p, _, _) = conversion::from_export(first);
        n.konst.dl_source_address = [0; 32];
        let mut b = TreeBuilder::new_object(host_context, ObjectState::Neighbor(n));
        let pb = b.new_dependent(0, host_context + 1, ObjectState::Path(p));
        let mut data = Vec::new();
        let mut blocks = Vec::new();
        for (i, e) in exports.iter().enumerate() {
            let (_, _, t, mut d) = conversion::from_export(e);
            let tb = b.new_dependent(pb, host_context + 2 + i as u64, ObjectState::Tcp(t));
            if !d.send.is_empty() || !d.buffered.is_empty() {
                d.block = tb;
                data.push(d);
            }
            blocks.push(tb);
        }
        let bytes = Request {
            request_id: 0x0ff1_0ad1,
            body: RequestBody::Initiate(b.build()),
        }
        .encode_with_data(&data);
        let c = session.call_bytes(&bytes, &[])?;
        let CompletionBody::Initiate(r) = &c.body else {
            return Err(err("bulk initiate", format!("unexpected completion {c:?}")));
        };
        let handle = |i: u32| {
            r.get(i as usize)
                .filter(|r| r.status == NdisStatus::SUCCESS)
                .and_then(|r| r.handle)
                .ok_or_else(|| {
                    err(
                        "bulk initiate",
                        format!("block {i}: {:?}", r.get(i as usize)),
                    )
                })
        };
        let mut tcp = Vec::with_capacity(blocks.len());
        for (tb, e) in blocks.iter().zip(&exports) {
            let h = handle(*tb)?;
            self.offloaded.insert(key_of(e), h);
            tcp.push(h);
        }
        Ok((tcp, [handle(pb)?, handle(0)?], exports))
    }

    /// Terminate a connection offloaded with [`HostStack::offload`] (handles of the tree's
    /// TCP, path and neighbor) and continue it in this engine: the delegated state from the
    /// completion, the other layers as exported, the data from the UPLOAD_DATA event. Other
    /// events that arrived meanwhile are returned, in order.
    pub fn upload(
        &mut self,
        session: &mut ControlSession,
        handles: [DeviceHandle; 3],
        exported: &ConnectionExport,
    ) -> Result<(ConnHandle, Vec<chimney_abi::Event>)> {
        let [tcp, path, neighbor] = handles;
        let term = |h: DeviceHandle, st| chimney_abi::Block {
            state_type: st,
            next: None,
            dependent: None,
            host_context: 0,
            body: TerminateBlock::Object {
                handle: h,
                return_delegated: true,
            },
        };
        let mut blocks = vec![
            term(neighbor, chimney_abi::OffloadStateType::Neighbor),
            term(path, path_type(exported)),
            term(tcp, chimney_abi::OffloadStateType::Tcp),
        ];
        blocks[0].dependent = Some(1);
        blocks[1].dependent = Some(2);
        let c = session.call(RequestBody::Terminate(chimney_abi::Tree { blocks }))?;
        let CompletionBody::Terminate(r) = &c.body else {
            return Err(err("terminate", format!("unexpected completion {c:?}")));
        };
        let delegated: TcpDelegated = match r.get(2).and_then(|b| b.state) {
            Some(DelegatedState::Tcp(d)) => d,
            other => return Err(err("terminate", format!("no TCP state: {other:?}"))),
        };
        // The UPLOAD_DATA event came before the completion (ring-abi.md §16.4).
        let mut data = TcpData::default();
        let mut others = Vec::new();
        let platform = session.platform_arc();
        session
            .channel
            .poll(&*platform)
            .map_err(|e| err("control poll", e))?;
        while let Some(e) = session.channel.next_event() {
            if e.code == chimney_abi::event::tcp_event::UPLOAD_DATA && e.handle == Some(tcp) {
                data = parse_upload_data(&e.payload).map_err(|e| err("UPLOAD_DATA", e))?;
            } else {
                others.push(e);
            }
        }
        self.offloaded.remove(&key_of(exported));
        let mut st = exported.clone();
        st.tcp.delegated = to_ns_delegated(&delegated);
        st.tcp.send_data = data.send;
        st.tcp.buffered_data = data.buffered;
        let now = self.now();
        let h = self.engine.import(now, &st).map_err(|e| err("import", e))?;
        Ok((h, others))
    }
}

fn key_of(e: &ConnectionExport) -> SwitchKey {
    SwitchKey {
        local: std::net::SocketAddr::new(e.path.const_.source_address, e.tcp.const_.local_port),
        remote: std::net::SocketAddr::new(
            e.path.const_.destination_address,
            e.tcp.const_.remote_port,
        ),
    }
}

fn path_type(e: &ConnectionExport) -> chimney_abi::OffloadStateType {
    if e.path.const_.source_address.is_ipv4() {
        chimney_abi::OffloadStateType::Ip4
    } else {
        chimney_abi::OffloadStateType::Ip6
    }
}

/// ABI delegated TCP state → netstack's, through the conversion module's whole-state path.
fn to_ns_delegated(d: &TcpDelegated) -> chimney_netstack::TcpDelegated {
    let zero = chimney_abi::TcpData::default();
    let n = chimney_abi::NeighborState {
        konst: chimney_abi::NeighborConst {
            dl_source_address: [0; 32],
            vlan_id: 0,
        },
        cached: chimney_abi::NeighborCached {
            dl_destination_address: [0; 32],
            host_reachability_delta: 0,
        },
        delegated: chimney_abi::NeighborDelegated::default(),
    };
    let p = chimney_abi::PathState {
        konst: chimney_abi::PathConst::V4 {
            source: std::net::Ipv4Addr::UNSPECIFIED,
            destination: std::net::Ipv4Addr::UNSPECIFIED,
        },
        cached: chimney_abi::PathCached { path_mtu: 1500 },
        delegated: chimney_abi::PathDelegated,
    };
    let t = chimney_abi::TcpState {
        konst: chimney_abi::TcpConst {
            flags: 0,
            remote_port: 1,
            local_port: 1,
            snd_wind_scale: 0,
            rcv_wind_scale: 0,
            remote_mss: 1460,
            hash_value: 0,
        },
        cached: conversion::tcp_cached_from_ns(&chimney_netstack::TcpCached {
            flags: 0,
            initial_rcv_wnd: 0,
            rcv_indication_size: 0,
            ka_probe_count: 0,
            ka_timeout: 0,
            ka_interval: 0,
            max_rt: 0,
            flow_label: 0,
            ttl_or_hop_limit: 64,
            tos_or_traffic_class: 0,
            user_priority: 0,
        }),
        delegated: *d,
    };
    conversion::to_export(&n, &p, &t, &zero).tcp.delegated
}
