//! `cargo xtask setup|build|test|demo|bench|parity`: everything a fresh machine needs, installed idempotently.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};

mod image;
mod parity;
mod setup;

#[derive(Parser)]
#[command(about = "Build, test and demo the load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, LLVM 22 libraries, bpf-linker 0.13.0, iproute2;
    /// mount bpffs.
    Setup,
    /// Build the agent (with its embedded eBPF object) into target/release/lb-agent.
    Build,
    /// Run every test: unit tests, then the privileged kernel tests (root required).
    Test,
    /// Show the load balancer working on the bundled example, in a throw-away network namespace.
    Demo,
    /// Measure the datapath and the control plane against kube-proxy's rule sets; prints markdown
    /// tables and writes bench/RESULTS.md (`--quick`: small sizes, nothing written).
    Bench {
        #[arg(long)]
        quick: bool,
        /// One section only (`packet`, `connect`, `veth`, `control`, or `kube`: the control plane's
        /// Kubernetes-source part alone); nothing is written.
        #[arg(long)]
        only: Option<String>,
    },
    /// Run every test and write docs/PARITY.md: each kube-proxy behaviour with the passing tests
    /// that show ours (a behaviour without one reads "missing").
    Parity,
    /// Build the container image as an OCI archive, target/lb-agent-image.tar (`podman load -i`,
    /// `ctr images import`), named lb-agent:dev as deploy/daemonset.yaml names it.
    Image,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(())
}

fn build() -> anyhow::Result<PathBuf> {
    setup::setup()?;
    println!("==> building lb-agent (with the eBPF programs) and the test binaries");
    run(cargo().args(["build", "--release", "-p", "lb-agent", "-p", "lb-tests", "--bins"]))?;
    let agent = workspace_root().join("target/release/lb-agent");
    ensure!(agent.exists(), "{} was not built", agent.display());
    Ok(agent)
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("{what} needs root (BPF programs, network namespaces, cgroups)");
    }
    Ok(())
}

/// Runs `cargo test ...`, echoing its output, and returns (passed, failed) summed over its
/// `test result:` lines.
fn cargo_test(cmd: &mut Command) -> anyhow::Result<(u64, u64)> {
    use std::io::BufRead as _;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().context("starting cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse::<u64>().ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait()?;
    ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok((passed, failed))
}

fn test() -> anyhow::Result<()> {
    test_recording(None)
}

/// Every test; with `parity`, the tests record the kube-proxy behaviours they showed there.
fn test_recording(parity: Option<&Path>) -> anyhow::Result<()> {
    require_root("cargo xtask test")?;
    let agent = build()?;
    // The image test (tests/tests/image.rs) unpacks this archive and runs the agent from it.
    println!("==> container image");
    let archive = image::image(&agent)?;
    println!("==> unit tests");
    let with_parity = |mut cmd: Command| {
        if let Some(dir) = parity {
            cmd.env("LB_PARITY_DIR", dir);
        }
        cmd
    };
    let unit = cargo_test(with_parity(cargo()).args([
        "test",
        "--release",
        "-p",
        "lb-common",
        "-p",
        "lb-agent",
        "-p",
        "xtask",
    ]))?;
    println!("==> kernel tests (real BPF programs, in test namespaces and cgroups)");
    let kernel = cargo_test(
        with_parity(cargo())
            .args(["test", "--release", "-p", "lb-tests", "--", "--test-threads=1"])
            .env("LB_AGENT_BIN", &agent)
            .env("LB_IMAGE_ARCHIVE", &archive),
    )?;
    ensure!(kernel.0 > 0, "no kernel test ran");
    println!("unit tests: {} passed, kernel tests: {} passed", unit.0, kernel.0);
    println!("xtask: {} passed, {} failed", unit.0 + kernel.0, unit.1 + kernel.1);
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    require_root("cargo xtask demo")?;
    let agent = build()?;
    println!("==> demo");
    run(Command::new(workspace_root().join("target/release/lb-demo")).env("LB_AGENT_BIN", &agent))
}

fn bench(quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    require_root("cargo xtask bench")?;
    let agent = build()?;
    println!("==> bench");
    let mut cmd = Command::new(workspace_root().join("target/release/lb-bench"));
    if quick {
        cmd.arg("--quick");
    }
    if let Some(section) = only {
        cmd.args(["--only", section]);
    }
    run(cmd.env("LB_AGENT_BIN", &agent))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => build().map(|p| println!("built {}", p.display())),
        Cmd::Test => test(),
        Cmd::Demo => demo(),
        Cmd::Bench { quick, only } => bench(quick, only.as_deref()),
        Cmd::Parity => parity::parity(&workspace_root(), |dir| test_recording(Some(dir))),
        Cmd::Image => {
            require_root("cargo xtask image")?;
            let agent = build()?;
            let archive = image::image(&agent)?;
            println!("wrote {} ({})", archive.display(), image::IMAGE);
            Ok(())
        }
    }
}
