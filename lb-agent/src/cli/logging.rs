//! Where and how log lines are written: standard error, as text or JSON, level from `RUST_LOG`
//! (default `info`). Colour only when standard error is a terminal, so files and pipes (a
//! container runtime's log) get plain text.
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// kube-runtime's watcher logs each 403 as a long debug dump; `source::watch_retry` says it
/// better. Quieted unless `RUST_LOG` names `kube_runtime` itself.
const QUIET_WATCHER: &str = "kube_runtime::watcher=error";

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, `span`…).
    Json,
}

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    // kube-runtime's own warnings (a long debug dump per 403 while an API server starts) are
    // replaced by the source's (`source::watch_retry`).
    let from_env = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default();
    let mut directives = if from_env.trim().is_empty() { "info".to_owned() } else { from_env.clone() };
    if !from_env.contains("kube_runtime") {
        directives = format!("{directives},{QUIET_WATCHER}");
    }
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET_WATCHER}")));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}
