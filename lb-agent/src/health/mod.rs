//! The agent's health endpoints: its own probes (`/livez`, `/healthz`, `/readyz`) and the
//! per-Service `healthCheckNodePort` servers of `externalTrafficPolicy: Local` Services.
pub mod probes;
pub mod service_checks;

pub use probes::Health;
