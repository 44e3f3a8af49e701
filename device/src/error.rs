use std::io;

/// Errors of the device library. Each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    #[error("wire: {0}")]
    Wire(#[from] chimney_wire::WireError),
    #[error("invalid configuration: {field}: {reason}")]
    Config { field: &'static str, reason: String },
}

impl DeviceError {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        DeviceError::Io {
            op: op.into(),
            source,
        }
    }
}

impl From<DeviceError> for io::Error {
    fn from(e: DeviceError) -> Self {
        io::Error::other(e.to_string())
    }
}
