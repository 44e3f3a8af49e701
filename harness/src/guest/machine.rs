//! The guest agent's machine: the device's queues as the guest-driver drives them (pair 0
//! NIC, pair 1 control ring, pair 2 data ring) and the host stack (a netstack engine on
//! pair 0), over any [`Platform`] — the Linux uio binding inside a QEMU guest, or the
//! harness's in-process VMM (so the agent's logic is also testable without a VM).
//!
//! Moving a connection to the device and back is the same as `crate::host_stack` does on
//! the in-process VMM (export → initiate with the data trailer, ring-abi.md §16.4;
//! terminate → delegated state + UPLOAD_DATA → import; DESIGN.md rule 5). That module is
//! typed to `VmmPlatform`; this one is generic over the platform.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chimney_abi::data_io::{parse_upload_data, DataRecord, DataRequest, TcpData};
use chimney_abi::{
    Completion, CompletionBody, DelegatedState, DeviceHandle, Event, NdisStatus, ObjectState,
    OffloadParameters, Request, RequestBody, TcpDelegated, TerminateBlock, TreeBuilder,
};
use chimney_device::conversion;
use chimney_device::data_path::{parse_key, tcp_segment, SwitchKey};
use chimney_miniport::data::{DataChannel, DataError};
use chimney_miniport::{ControlChannel, NicQueues, Platform};
use chimney_netstack::{ConnHandle, ConnectionExport, Engine, EngineConfig, Instant};

/// Bound for one control completion: a device that stopped answering fails the step.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(20);

/// What the machine failed at, as text for the step report.
pub type MResult<T> = std::result::Result<T, String>;

pub struct Machine<P: Platform> {
    pub platform: Arc<P>,
    nic: NicQueues,
    pub control: ControlChannel,
    pub data: DataChannel,
    pub engine: Engine,
    origin: std::time::Instant,
    /// 4-tuples of offloaded connections: their segments that still come up pair 0 are
    /// forwarded to the device (C-197).
    offloaded: HashMap<SwitchKey, DeviceHandle>,
    forwards: Vec<(DeviceHandle, Vec<u8>)>,
    /// Control-ring events in arrival order, not yet consumed by a step.
    pub events: Vec<Event>,
    /// Data-ring records not yet consumed by a step.
    pub records: Vec<DataRecord>,
    next_id: u64,
}

impl<P: Platform> Machine<P> {
    /// Take over the three pairs' queues (already known to the device), NEGOTIATE and
    /// SET_PARAMETERS.
    pub fn new(
        platform: Arc<P>,
        nic: NicQueues,
        mut control: ControlChannel,
        data: DataChannel,
        engine_cfg: EngineConfig,
    ) -> MResult<Self> {
        let c = control
            .call(
                &*platform,
                RequestBody::Negotiate(chimney_abi::Negotiate {
                    min_version: chimney_abi::ABI_MIN_VERSION,
                    max_version: chimney_abi::ABI_VERSION,
                }),
                CONTROL_TIMEOUT,
            )
            .map_err(|e| format!("NEGOTIATE: {e}"))?;
        if c.status != NdisStatus::SUCCESS {
            return Err(format!("NEGOTIATE: expected SUCCESS, seen {c:?}"));
        }
        let c = control
            .call(
                &*platform,
                RequestBody::SetParameters(OffloadParameters::default()),
                CONTROL_TIMEOUT,
            )
            .map_err(|e| format!("SET_PARAMETERS: {e}"))?;
        if c.status != NdisStatus::SUCCESS {
            return Err(format!("SET_PARAMETERS: expected SUCCESS, seen {c:?}"));
        }
        let engine =
            Engine::new(engine_cfg, Instant::ZERO).map_err(|e| format!("host stack: {e}"))?;
        Ok(Machine {
            platform,
            nic,
            control,
            data,
            engine,
            origin: std::time::Instant::now(),
            offloaded: HashMap::new(),
            forwards: Vec::new(),
            events: Vec::new(),
            records: Vec::new(),
            next_id: 1,
        })
    }

    pub fn now(&self) -> Instant {
        Instant::from_micros(self.origin.elapsed().as_micros() as u64)
    }

    /// A fresh request id for data-ring requests.
    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// One round of everything: engine frames out on pair 0, frames in (waiting up to
    /// `wait` for the first), timers, forwards of offloaded segments, control events and
    /// data records collected.
    pub fn poll(&mut self, wait: Duration) -> MResult<()> {
        let now = self.now();
        self.flush_tx(now)?;
        let mut timeout = wait;
        let mut got = 0usize;
        while let Some(f) = self
            .nic
            .recv(&*self.platform, timeout)
            .map_err(|e| format!("pair 0 rx: {e}"))?
        {
            got += 1;
            timeout = Duration::ZERO;
            if let Some(h) = parse_key(&f).and_then(|k| self.offloaded.get(&k)) {
                if let Some(seg) = tcp_segment(&f) {
                    self.forwards.push((*h, seg.to_vec()));
                }
                continue;
            }
            // A frame the engine cannot parse is the wire's problem, not the step's.
            let _ = self.engine.handle_frame(self.now(), &f);
            if got % 32 == 0 {
                self.flush_tx(self.now())?;
            }
        }
        let now = self.now();
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
        }
        self.flush_tx(now)?;
        for (h, seg) in std::mem::take(&mut self.forwards) {
            let id = self.id();
            self.submit(DataRequest::Forward {
                handle: h,
                request_id: id,
                data: seg,
            })?;
        }
        self.control
            .poll(&*self.platform)
            .map_err(|e| format!("control ring: {e}"))?;
        while let Some(e) = self.control.next_event() {
            self.events.push(e);
        }
        self.data
            .poll(&*self.platform)
            .map_err(|e| format!("data ring: {e}"))?;
        while let Some(r) = self.data.next_record() {
            // Forward completions are bookkeeping only.
            if r.kind != chimney_abi::data_io::DataRxKind::ForwardComplete {
                self.records.push(r);
            }
        }
        Ok(())
    }

    /// Wait for data-ring activity (records) up to `wait`, then poll everything.
    pub fn poll_data(&mut self, wait: Duration) -> MResult<()> {
        self.data
            .poll(&*self.platform)
            .map_err(|e| format!("data ring: {e}"))?;
        if !self.data.has_records() {
            self.data
                .wait(&*self.platform, wait)
                .map_err(|e| format!("data ring: {e}"))?;
        }
        self.poll(Duration::ZERO)
    }

    fn flush_tx(&mut self, now: Instant) -> MResult<()> {
        let limit = std::time::Instant::now() + Duration::from_secs(10);
        while let Some(t) = self.engine.poll_transmit(now) {
            let frame = t.frame.to_vec();
            loop {
                match self.nic.send(&*self.platform, &frame) {
                    Ok(()) => break,
                    Err(chimney_miniport::NicError::TxFull(n)) => {
                        if std::time::Instant::now() > limit {
                            return Err(format!(
                                "pair 0 tx: all {n} buffers stayed with the device for 10 s \
                                 (device gone?)"
                            ));
                        }
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    Err(e) => return Err(format!("pair 0 tx: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Submit a data-ring request, waiting for a free slot (bounded).
    pub fn submit(&mut self, req: DataRequest) -> MResult<()> {
        let limit = std::time::Instant::now() + CONTROL_TIMEOUT;
        loop {
            match self.data.submit(&*self.platform, &req) {
                Ok(()) => return Ok(()),
                Err(DataError::NoFreeSlot(n)) => {
                    if std::time::Instant::now() > limit {
                        return Err(format!(
                            "data ring: all {n} tx slots stayed with the device for \
                             {CONTROL_TIMEOUT:?} (device gone?)"
                        ));
                    }
                    self.data
                        .poll(&*self.platform)
                        .map_err(|e| format!("data ring: {e}"))?;
                    while let Some(r) = self.data.next_record() {
                        self.records.push(r);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => return Err(format!("data ring: {e}")),
            }
        }
    }

    /// Send a control request (raw bytes with our request id) and wait for its completion;
    /// events read meanwhile are kept.
    fn call_bytes(&mut self, mut bytes: Vec<u8>) -> MResult<Completion> {
        let id = self.control.allocate_request_id();
        if bytes.len() >= 16 {
            bytes[8..16].copy_from_slice(&id.to_le_bytes());
        }
        self.control
            .submit_bytes(&*self.platform, id, &bytes, &[])
            .map_err(|e| format!("control ring: {e}"))?;
        self.wait_completion(id)
    }

    fn wait_completion(&mut self, id: u64) -> MResult<Completion> {
        let limit = std::time::Instant::now() + CONTROL_TIMEOUT;
        loop {
            self.control
                .poll(&*self.platform)
                .map_err(|e| format!("control ring: {e}"))?;
            if let Some(c) = self.control.take_completion(id) {
                while let Some(e) = self.control.next_event() {
                    self.events.push(e);
                }
                return Ok(c);
            }
            if std::time::Instant::now() > limit {
                return Err(format!(
                    "no completion for control request {id} within {CONTROL_TIMEOUT:?} \
                     (device gone?)"
                ));
            }
            // Keep pair 0 and the data ring moving while the device works.
            self.poll(Duration::from_millis(2))?;
        }
    }

    /// Offload `conn`: export it, initiate neighbor → path → TCP with the data trailer.
    /// Returns the handles [TCP, path, neighbor] and the export.
    pub fn offload(
        &mut self,
        conn: ConnHandle,
        host_context: u64,
    ) -> MResult<([DeviceHandle; 3], ConnectionExport)> {
        let now = self.now();
        let export = self
            .engine
            .export(now, conn)
            .map_err(|e| format!("export: {e}"))?;
        self.flush_tx(now)?;
        let (mut n, p, t, mut data) = conversion::from_export(&export);
        // C-047: no software-configurable source MAC; all zero = the NIC's own.
        n.konst.dl_source_address = [0; 32];
        let mut b = TreeBuilder::new_object(host_context, ObjectState::Neighbor(n));
        let pb = b.new_dependent(0, host_context + 1, ObjectState::Path(p));
        let tb = b.new_dependent(pb, host_context + 2, ObjectState::Tcp(t));
        data.block = tb;
        let bytes = Request {
            request_id: 0,
            body: RequestBody::Initiate(b.build()),
        }
        .encode_with_data(&[data]);
        let c = self.call_bytes(bytes)?;
        let CompletionBody::Initiate(r) = &c.body else {
            return Err(format!("initiate: unexpected completion {c:?}"));
        };
        let handle = |i: u32| {
            r.get(i as usize)
                .filter(|r| r.status == NdisStatus::SUCCESS)
                .and_then(|r| r.handle)
                .ok_or_else(|| format!("initiate: block {i} failed: {r:?}"))
        };
        let handles = [handle(tb)?, handle(pb)?, handle(0)?];
        self.offloaded.insert(key_of(&export), handles[0]);
        Ok((handles, export))
    }

    /// Terminate an offloaded connection (tree neighbor → path → TCP) and continue it in
    /// the engine from the returned delegated state and UPLOAD_DATA (C-112, C-116).
    /// `import = false` only terminates (a connection that ended in the device); a returned
    /// state of Closed or TimeWait is not imported either. `None`: nothing to continue.
    pub fn upload(
        &mut self,
        handles: [DeviceHandle; 3],
        exported: &ConnectionExport,
        import: bool,
    ) -> MResult<Option<ConnHandle>> {
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
        let path_type = if exported.path.const_.source_address.is_ipv4() {
            chimney_abi::OffloadStateType::Ip4
        } else {
            chimney_abi::OffloadStateType::Ip6
        };
        let mut blocks = vec![
            term(neighbor, chimney_abi::OffloadStateType::Neighbor),
            term(path, path_type),
            term(tcp, chimney_abi::OffloadStateType::Tcp),
        ];
        blocks[0].dependent = Some(1);
        blocks[1].dependent = Some(2);
        let bytes = Request {
            request_id: 0,
            body: RequestBody::Terminate(chimney_abi::Tree { blocks }),
        }
        .encode();
        let c = self.call_bytes(bytes)?;
        let CompletionBody::Terminate(r) = &c.body else {
            return Err(format!("terminate: unexpected completion {c:?}"));
        };
        self.offloaded.remove(&key_of(exported));
        if !import {
            return Ok(None);
        }
        let delegated: TcpDelegated = match r.get(2).and_then(|b| b.state) {
            Some(DelegatedState::Tcp(d)) => d,
            other => return Err(format!("terminate: no TCP state returned: {other:?}")),
        };
        // A connection that ended in the device (reset, TIME_WAIT after both FINs) has
        // nothing to continue in the host stack.
        if matches!(
            delegated.state,
            chimney_abi::TcpConnectionState::Closed | chimney_abi::TcpConnectionState::TimeWait
        ) {
            self.events.retain(|e| {
                !(e.code == chimney_abi::event::tcp_event::UPLOAD_DATA && e.handle == Some(tcp))
            });
            return Ok(None);
        }
        // The UPLOAD_DATA event came before the completion (ring-abi.md §16.4).
        let mut data = TcpData::default();
        let mut rest = Vec::new();
        for e in std::mem::take(&mut self.events) {
            if e.code == chimney_abi::event::tcp_event::UPLOAD_DATA && e.handle == Some(tcp) {
                data = parse_upload_data(&e.payload).map_err(|e| format!("UPLOAD_DATA: {e}"))?;
            } else {
                rest.push(e);
            }
        }
        self.events = rest;
        let mut st = exported.clone();
        st.tcp.delegated = to_ns_delegated(&delegated);
        st.tcp.send_data = data.send;
        st.tcp.buffered_data = data.buffered;
        let now = self.now();
        let h = self
            .engine
            .import(now, &st)
            .map_err(|e| format!("import into the host stack: {e}"))?;
        Ok(Some(h))
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

/// ABI delegated TCP state → netstack's, through the conversion module's whole-state path
/// (placeholder neighbor/path/const values: only `.tcp.delegated` is used).
fn to_ns_delegated(d: &TcpDelegated) -> chimney_netstack::TcpDelegated {
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
    conversion::to_export(&n, &p, &t, &chimney_abi::TcpData::default())
        .tcp
        .delegated
}
