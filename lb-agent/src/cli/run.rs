//! `lb-agent run`: the agent itself (`crate::agent`).
pub use crate::agent::Config as RunArgs;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::agent::run(args)
}
