//! Idempotent installation of the eBPF toolchain and test prerequisites. Each step checks first
//! and says what it does; a step that cannot succeed fails loudly (CI never skips silently).
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::run;

/// Pinned versions (see ARCHITECTURE.md, "Toolchain"): newer aya releases need rustc 1.98.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// iptables and nftables: the kube-proxy cleanup test (tests/tests/kube_proxy_cleanup.rs);
/// ethtool: the XDP test's veth offload settings (tests/tests/north_south.rs).
/// `umoci` assembles the container image (`cargo xtask image`). containernetworking-plugins: the
/// real CNI plugins (bridge, ptp, host-local, portmap) of tests/tests/cni_plugins.rs.
const APT_PACKAGES: [&str; 9] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "iptables",
    "nftables",
    "ethtool",
    "umoci",
    "containernetworking-plugins",
];

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn rust_src() -> anyhow::Result<()> {
    let toolchains =
        output(Command::new("rustup").args(["toolchain", "list"])).context("rustup is required")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let installed =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: nightly rust-src present");
        return Ok(());
    }
    println!("setup: installing rust-src for nightly");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("setup: {} present", APT_PACKAGES.join(", "));
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; run `cargo xtask setup` as root");
    }
    println!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(v) = output(Command::new("bpf-linker").arg("--version")) {
        if v.contains(BPF_LINKER_VERSION) {
            println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
            return Ok(());
        }
        println!("setup: replacing {} with bpf-linker {BPF_LINKER_VERSION}", v.trim());
    } else {
        println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    }
    run(Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "bpf-linker", "--force", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        // Both are needed: llvm-sys reads the second, bpf-linker's build script the first.
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX))
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    });
    if mounted {
        println!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at /sys/fs/bpf; run `cargo xtask setup` as root");
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

pub fn setup() -> anyhow::Result<()> {
    rust_src()?;
    apt_packages()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}
