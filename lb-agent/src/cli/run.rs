//! `lb-agent run`: the agent itself (`crate::agent`), after `--config` (kube-proxy's
//! configuration file) is read into its flags.
use clap::{ArgMatches, parser::ValueSource};

pub use crate::agent::Config as RunArgs;
use crate::{agent::kube_proxy_config::ConfigError, cli::logging::LogFormat};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::agent::run(args)
}

/// Applies `--config` to `args` (flags given on the command line or through their environment
/// variables win), and its `logging.format` to `log_format` unless `--log-format` was given.
/// `run` and `top` are the parsed `run` subcommand and the whole command line.
pub fn read_config(
    args: &mut RunArgs,
    run: &ArgMatches,
    top: &ArgMatches,
    log_format: &mut LogFormat,
) -> Result<(), ConfigError> {
    let given = |m: &ArgMatches, id: &str| {
        matches!(m.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
    };
    let Some(file) = args.apply_kube_proxy_config(&|id| given(run, id))? else { return Ok(()) };
    if file.json_logs && !given(top, "log_format") && !given(run, "log_format") {
        *log_format = LogFormat::Json;
    }
    args.not_applicable = file.not_applicable;
    Ok(())
}
