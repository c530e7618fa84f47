//! lb-agent: the node agent (`run`) and the operator CLI (`inspect`, `explain`, `plan`, `cleanup`,
//! `trace`).
//!
//! A thin shell: the flags of each command are parsed here and the library (`lb_agent`) does the
//! work (`lb_agent::cli` prints, `lb_agent::agent` runs).
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lb_agent::cli::{self, Output};

#[derive(Parser)]
#[command(version, about = "eBPF service load balancer for Kubernetes (kube-proxy replacement)")]
struct Cli {
    /// Log lines as `text` (coloured only on a terminal) or `json` (one object per line, as
    /// kube-proxy's `--logging-format json`).
    #[arg(long, value_enum, default_value_t, global = true)]
    log_format: cli::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

// `run`'s flags make its variant large; the command is parsed once.
#[allow(clippy::large_enum_variant)]
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
    /// Why does a connection or packet to ADDR:PORT/PROTO go where it goes? Walks the kernel's
    /// lookups over the pinned maps (works while the agent is down) and says, in plain words,
    /// which Service, which backends may be picked on this path and why others may not, and the
    /// verdict; with --from ADDR:PORT on the packet path, the exact backend of a new flow.
    Explain(cli::explain::ExplainArgs),
    /// Print the desired state for a node without touching the kernel.
    Plan(cli::plan::PlanArgs),
    /// Remove everything the agent installed: pinned maps and links (which detaches the programs).
    /// Stop the agent first. With --kube-proxy: remove what kube-proxy left instead (or as well,
    /// with --bpffs).
    Cleanup {
        /// Directory the agent pins under [default: /sys/fs/bpf/lb]. Cleaned when given, or when
        /// --kube-proxy is not.
        #[arg(long)]
        bpffs: Option<PathBuf>,
        /// The cgroup the agent attached to: checked afterwards for programs of ours still attached.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Remove kube-proxy's leftovers in this network namespace: its KUBE-* iptables chains
        /// (nat, filter, mangle; IPv4 and IPv6; nft and legacy backends) with the jumps to them,
        /// and the nftables tables `ip kube-proxy` and `ip6 kube-proxy`. Stop kube-proxy first.
        #[arg(long)]
        kube_proxy: bool,
    },
    /// List the programs attached to a cgroup's socket hooks (ours are named lb_*).
    Attached {
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// What would the TC datapath do with this packet? (BPF_PROG_TEST_RUN on the pinned maps;
    /// creates conntrack entries like a real packet.)
    ///
    /// Runs lb_tc_ingress or lb_tc_egress once on an Ethernet frame (BPF_PROG_TEST_RUN) against
    /// the maps pinned under --bpffs, and prints the verdict and the output frame decoded
    /// (addresses, ports, checksums). Nothing is attached and nothing is sent, but the maps are
    /// live: a packet that starts a flow to a frontend creates conntrack entries (a remote
    /// backend's SNAT port included), a packet of a tracked flow refreshes its entries, and the
    /// datapath counters count it.
    Trace(cli::trace::TraceArgs),
    /// Switch the kernel programs' own log on for one frontend's Service port, or off (at run
    /// time; the running agent prints the messages).
    Log {
        #[command(subcommand)]
        switch: cli::log::Switch,
        /// Directory the agent pins its maps under.
        #[arg(long, default_value = "/sys/fs/bpf/lb", global = true)]
        bpffs: PathBuf,
    },
    /// How the node's load balancer is doing: the agent (running, ready, source, last sync),
    /// the attached programs and where, and each map's fill level (works while the agent is down).
    Status {
        /// Directory the agent pins its maps under.
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        bpffs: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn main() -> std::process::ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `run --config FILE` (kube-proxy's configuration) is read before logging starts: it may ask
    // for JSON logs.
    if let (Command::Run(args), Some(("run", run))) = (&mut cli.command, matches.subcommand())
        && let Err(e) = cli::run::read_config(args, run, &matches, &mut cli.log_format)
    {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    cli::logging::init(cli.log_format);
    // An ordinary error is one line (with its causes), never a backtrace.
    match dispatch(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => cli::run::run(args),
        Command::Inspect { what, bpffs, output } => cli::inspect::inspect(what, &bpffs, output),
        Command::Explain(args) => cli::explain::explain(args),
        Command::Plan(args) => cli::plan::plan(args),
        Command::Cleanup { bpffs, cgroup, kube_proxy } => {
            cli::cleanup(bpffs.as_deref(), cgroup.as_deref(), kube_proxy)
        }
        Command::Attached { cgroup, output } => cli::attached(&cgroup, output),
        Command::Trace(args) => cli::trace::trace(args),
        Command::Log { switch, bpffs } => cli::log::log(switch, &bpffs),
        Command::Status { bpffs, output } => cli::status::status(&bpffs, output),
    }
}
