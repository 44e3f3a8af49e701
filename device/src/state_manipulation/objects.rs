//! The context areas of offloaded objects (C-026). Ownership of state is in the types
//! (DESIGN.md rule 2): const structures have getters only and are never changed (C-023);
//! cached structures change only through [`TcpObject::apply_update`] and friends, i.e. a
//! host update (C-024); delegated structures belong to the device (C-025) and are handed
//! back by query and terminate.

use chimney_abi::{
    DeviceHandle, NeighborCached, NeighborConst, NeighborDelegated, PathCached, PathConst,
    PathDelegated, TcpCached, TcpConst, TcpDelegated, TCP_FLAG_KEEP_ALIVE_RESTART,
    TCP_FLAG_MAX_RT_RESTART,
};
use std::net::IpAddr;

/// A neighbor object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborObject {
    konst: NeighborConst,
    pub(crate) cached: NeighborCached,
    pub(crate) delegated: NeighborDelegated,
    host_context: u64,
    pub(crate) invalid: bool,
    /// Number of path objects linked to this neighbor.
    pub(crate) dependents: u32,
}

/// A path object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathObject {
    konst: PathConst,
    cached: PathCached,
    pub(crate) delegated: PathDelegated,
    host_context: u64,
    pub(crate) invalid: bool,
    /// The neighbor this path sends through; changed only by an update relink (C-084).
    pub(crate) neighbor: DeviceHandle,
    pub(crate) dependents: u32,
}

/// A TCP connection object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpObject {
    konst: TcpConst,
    cached: TcpCached,
    pub(crate) delegated: TcpDelegated,
    host_context: u64,
    pub(crate) invalid: bool,
    /// An upload request (TcpIndicateRetrieve) was already raised for it.
    pub(crate) retrieve_requested: bool,
    /// Fixed for the life of the offload (C-095).
    path: DeviceHandle,
    tuple: FourTuple,
}

/// Connection lookup key (local = path source, remote = path destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourTuple {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
}

impl FourTuple {
    pub fn new(path: &PathConst, tcp: &TcpConst) -> Self {
        let (local, remote) = match *path {
            PathConst::V4 {
                source,
                destination,
            } => (IpAddr::V4(source), IpAddr::V4(destination)),
            PathConst::V6 {
                source,
                destination,
            } => (IpAddr::V6(source), IpAddr::V6(destination)),
        };
        Self {
            local,
            remote,
            local_port: tcp.local_port,
            remote_port: tcp.remote_port,
        }
    }
}

impl NeighborObject {
    pub(crate) fn new(
        konst: NeighborConst,
        cached: NeighborCached,
        delegated: NeighborDelegated,
        host_context: u64,
    ) -> Self {
        Self {
            konst,
            cached,
            delegated,
            host_context,
            invalid: false,
            dependents: 0,
        }
    }
    pub fn konst(&self) -> &NeighborConst {
        &self.konst
    }
    pub fn cached(&self) -> &NeighborCached {
        &self.cached
    }
    pub fn delegated(&self) -> &NeighborDelegated {
        &self.delegated
    }
    pub fn host_context(&self) -> u64 {
        self.host_context
    }
    pub fn is_invalid(&self) -> bool {
        self.invalid
    }
    pub fn dependents(&self) -> u32 {
        self.dependents
    }
    /// Host update of cached variables (C-083; the next-hop MAC, C-091).
    pub(crate) fn apply_update(&mut self, cached: NeighborCached) {
        self.cached = cached;
    }
}

impl PathObject {
    pub(crate) fn new(
        konst: PathConst,
        cached: PathCached,
        delegated: PathDelegated,
        host_context: u64,
        neighbor: DeviceHandle,
    ) -> Self {
        Self {
            konst,
            cached,
            delegated,
            host_context,
            invalid: false,
            neighbor,
            dependents: 0,
        }
    }
    pub fn konst(&self) -> &PathConst {
        &self.konst
    }
    pub fn cached(&self) -> &PathCached {
        &self.cached
    }
    pub fn delegated(&self) -> &PathDelegated {
        &self.delegated
    }
    pub fn host_context(&self) -> u64 {
        self.host_context
    }
    pub fn is_invalid(&self) -> bool {
        self.invalid
    }
    pub fn neighbor(&self) -> DeviceHandle {
        self.neighbor
    }
    pub fn dependents(&self) -> u32 {
        self.dependents
    }
    /// Host update of cached variables (PathMtu, C-091).
    pub(crate) fn apply_update(&mut self, cached: PathCached) {
        self.cached = cached;
    }
}

impl TcpObject {
    pub(crate) fn new(
        konst: TcpConst,
        cached: TcpCached,
        delegated: TcpDelegated,
        host_context: u64,
        path: DeviceHandle,
        tuple: FourTuple,
    ) -> Self {
        Self {
            konst,
            cached,
            delegated,
            host_context,
            invalid: false,
            retrieve_requested: false,
            path,
            tuple,
        }
    }
    pub fn konst(&self) -> &TcpConst {
        &self.konst
    }
    pub fn cached(&self) -> &TcpCached {
        &self.cached
    }
    pub fn delegated(&self) -> &TcpDelegated {
        &self.delegated
    }
    pub fn host_context(&self) -> u64 {
        self.host_context
    }
    pub fn is_invalid(&self) -> bool {
        self.invalid
    }
    pub fn path(&self) -> DeviceHandle {
        self.path
    }
    pub fn tuple(&self) -> FourTuple {
        self.tuple
    }

    /// Host update of the cached variables (C-083) with the side effects the flags ask
    /// for on delegated timer state:
    /// * KEEP_ALIVE_RESTART → keepalive timer restarts from zero: TimeoutDelta = KaTimeout,
    ///   ProbeCount = 0 (C-087);
    /// * MAX_RT_RESTART → TotalRT = 0 (C-088), and while it is set a changed KaProbeCount
    ///   resets KeepAlive.ProbeCount and a changed KaTimeout/KaInterval resets
    ///   KeepAlive.TimeoutDelta, as the text says (C-089, digest §7.1 item 6 kept as written).
    ///
    /// UPDATE_RCV_WND (C-086) needs a running engine to advertise the window; it is stored
    /// and acted on by the engine (later issue).
    pub(crate) fn apply_update(&mut self, new: TcpCached) {
        let old = self.cached;
        let d = &mut self.delegated;
        if new.flags & TCP_FLAG_KEEP_ALIVE_RESTART != 0 {
            d.keepalive.count = 0;
            d.keepalive.timeout_delta = new.ka_timeout;
        }
        if new.flags & TCP_FLAG_MAX_RT_RESTART != 0 {
            d.total_rt = 0;
            if new.ka_probe_count != old.ka_probe_count {
                d.keepalive.count = 0;
            }
            if new.ka_timeout != old.ka_timeout || new.ka_interval != old.ka_interval {
                d.keepalive.timeout_delta = new.ka_timeout;
            }
        }
        self.cached = new;
    }
}
