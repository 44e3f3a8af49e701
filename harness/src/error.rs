//! The harness's error type.

use chimney_miniport::VirtqueueError;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-user {op}: {source}")]
    VhostUser {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("the device does not offer {feature}")]
    MissingFeature { feature: &'static str },
    #[error("the device offers {offered} queues, {wanted} are needed")]
    TooFewQueues { offered: u64, wanted: u64 },
    #[error("queue {queue}: {source}")]
    Virtqueue {
        queue: u16,
        #[source]
        source: VirtqueueError,
    },
    #[error("queue {0} is not set up")]
    NoSuchQueue(u16),
    #[error("device process: {0}")]
    Device(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("control ring: {0}")]
    Control(#[from] chimney_miniport::ControlError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Wire(#[from] chimney_wire::WireError),
}

impl HarnessError {
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            op: op.into(),
            source,
        }
    }
    pub fn vhost(op: &'static str) -> impl FnOnce(vhost::Error) -> Self {
        move |source| HarnessError::VhostUser { op, source }
    }
}

pub type Result<T> = std::result::Result<T, HarnessError>;
