//! lb-agent: the node agent (`run`) and the operator CLI (`inspect`, `plan`, `cleanup`).
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

mod cli;
mod datapath;
mod model;
mod source;
mod sync;

#[derive(Parser)]
#[command(version, about = "eBPF service load balancer for Kubernetes (kube-proxy replacement)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Program this node's load balancer from a source and keep it in sync.
    Run(cli::run::RunArgs),
    /// Read the pinned maps and print what the kernel uses (works while the agent is down).
    Inspect {
        #[command(subcommand)]
        what: cli::inspect::What,
        /// Directory the agent pins its maps under.
        #[arg(long, default_value = "/sys/fs/bpf/lb", global = true)]
        bpffs: PathBuf,
        #[arg(long, value_enum, default_value_t, global = true)]
        output: Output,
    },
    /// Print the desired state for a node without touching the kernel.
    Plan(cli::plan::PlanArgs),
    /// Remove everything the agent installed: pinned maps and links (which detaches the programs).
    /// Stop the agent first.
    Cleanup {
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        bpffs: PathBuf,
        /// The cgroup the agent attached to: checked afterwards for programs of ours still attached.
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
    /// List the programs attached to a cgroup's socket hooks (ours are named lb_*).
    Attached {
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Run(args) => cli::run::run(args),
        Command::Inspect { what, bpffs, output } => cli::inspect::inspect(what, &bpffs, output),
        Command::Plan(args) => cli::plan::plan(args),
        Command::Cleanup { bpffs, cgroup } => cli::cleanup(&bpffs, cgroup.as_deref()),
        Command::Attached { cgroup, output } => cli::attached(&cgroup, output),
    }
}
