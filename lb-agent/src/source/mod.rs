//! Where objects come from. A source only produces `model::Objects`; it knows nothing of maps.
pub mod api_check;
pub mod compact;
pub mod file;
pub mod file_store;
pub mod kubernetes;
pub mod store;
pub mod watch_retry;
pub mod wire;
pub mod yaml_split;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not valid YAML: {reason}")]
    Syntax { path: String, reason: String },
    #[error("cannot watch {path}: {source}")]
    Watch { path: String, source: notify::Error },
}
