use std::io;

/// Everything that can go wrong on the wire side. Each variant names the operation.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    /// An external command (`ip ...`) exited unsuccessfully.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A name given by the caller is not usable (too long, contains NUL or '/').
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    /// A frame is larger than the buffer or the format allows.
    #[error("frame too large: {len} bytes, limit {limit}")]
    FrameTooLarge { len: usize, limit: usize },
    /// A buffer is shorter than the virtio-net header.
    #[error("buffer of {len} bytes is shorter than the {need}-byte virtio-net header")]
    ShortHeader { len: usize, need: usize },
    /// The pcap writer failed.
    #[error("pcap {op}: {source}")]
    Pcap {
        op: &'static str,
        #[source]
        source: pcap_file::PcapError,
    },
}

impl WireError {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        WireError::Io {
            op: op.into(),
            source,
        }
    }
}

impl From<WireError> for io::Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Io { ref source, .. } => io::Error::new(source.kind(), e.to_string()),
            other => io::Error::other(other.to_string()),
        }
    }
}
