//! Errors of the benchmark suite (the binary wraps them in anyhow).

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("parse: {0}")]
    Parse(String),
    #[error(transparent)]
    Harness(#[from] chimney_harness::HarnessError),
    #[error(transparent)]
    Wire(#[from] chimney_wire::WireError),
    #[error("data channel: {0}")]
    Data(#[from] chimney_miniport::data::DataError),
    #[error("host stack engine: {0}")]
    Engine(String),
    #[error("device: {0}")]
    Device(String),
    #[error("{what} stalled: {detail}")]
    Stalled { what: String, detail: String },
    #[error("unexpected record from the device in {what}: {detail}")]
    Unexpected { what: String, detail: String },
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;
