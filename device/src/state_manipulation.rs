//! The offloaded-object table and the five state-manipulation operations
//! (initiate, query, update, invalidate, terminate; spec digest §3.0–§3.5).

/// Per-guest limits on offloaded objects (OFFLOAD_*_ENTRIES when exceeded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLimits {
    pub neighbors: u32,
    pub paths: u32,
    pub tcp: u32,
}

impl Default for ObjectLimits {
    fn default() -> Self {
        Self {
            neighbors: 1024,
            paths: 4096,
            tcp: 65536,
        }
    }
}
