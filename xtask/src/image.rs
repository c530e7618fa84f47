//! `cargo xtask image`: the agent's container image as an OCI archive
//! (`target/lb-agent-image.tar`), which `podman load` and `ctr images import` take, named as the
//! DaemonSet names it (`lb-agent:dev`).
//!
//! No base image comes from a registry: `umoci` (Debian's package) makes an empty image and one
//! layer is assembled here from the built agent and, for `cleanup --kube-proxy`, the node's
//! iproute2, iptables (nft and legacy) and nftables binaries with exactly the shared libraries
//! they load (as `ldd` lists them) and the iptables extensions.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{run, workspace_root};

/// The name the DaemonSet's `image:` uses.
pub const IMAGE: &str = "lb-agent:dev";
const TAG: &str = "dev";
/// Where the archive is written.
pub fn archive_path() -> PathBuf {
    workspace_root().join("target/lb-agent-image.tar")
}

/// The programs `cleanup --kube-proxy` runs, by the names it looks for.
const TOOLS: &[&str] = &[
    "ip",
    "nft",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore",
    "iptables-save",
    "iptables-restore",
    "ip6tables-save",
    "ip6tables-restore",
];

/// Where a program is on this machine.
fn which(name: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("{name} is not installed (cargo xtask setup installs iproute2, iptables and nftables)")
}

/// The shared libraries `binary` loads, and the dynamic loader (absolute paths).
fn libraries(binary: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    ensure!(out.status.success(), "ldd {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect())
}

/// Copies `from` (following links) to the same absolute path under `root`.
fn copy_into(root: &Path, from: &Path) -> anyhow::Result<()> {
    let to = root.join(from.strip_prefix("/").unwrap_or(from));
    std::fs::create_dir_all(to.parent().context("a parent directory")?)?;
    std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

/// Fills `rootfs` with the agent and the tools, and what they need to run.
fn populate(rootfs: &Path, agent: &Path) -> anyhow::Result<()> {
    let mut binaries = vec![(agent.to_owned(), PathBuf::from("/usr/local/bin/lb-agent"))];
    for tool in TOOLS {
        // Link names (iptables-nft-save → xtables-nft-multi) become copies of the real program:
        // the multi-call programs pick their personality from the name they are run by.
        let path = which(tool)?;
        let real = std::fs::canonicalize(&path)?;
        binaries.push((real, PathBuf::from("/usr/sbin").join(tool)));
    }
    let mut libs = BTreeSet::new();
    for (from, to) in &binaries {
        let dest = rootfs.join(to.strip_prefix("/").unwrap_or(to));
        std::fs::create_dir_all(dest.parent().context("a parent directory")?)?;
        std::fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
        libs.extend(libraries(from)?);
    }
    // The iptables extensions are loaded at run time (not listed by ldd): take them whole.
    let xtables = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    if xtables.is_dir() {
        for entry in std::fs::read_dir(xtables)? {
            let path = entry?.path();
            libs.extend(libraries(&path).unwrap_or_default());
            libs.insert(path);
        }
    }
    for lib in &libs {
        copy_into(rootfs, lib)?;
    }
    for dir in ["tmp", "run", "var/run", "etc"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    Ok(())
}

/// Builds the image from `agent` and writes the archive; returns its path.
pub fn image(agent: &Path) -> anyhow::Result<PathBuf> {
    let work = workspace_root().join("target/image");
    if work.exists() {
        std::fs::remove_dir_all(&work).context("clearing target/image")?;
    }
    std::fs::create_dir_all(&work)?;
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    let image = format!("{}:{TAG}", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle))?;
    populate(&bundle.join("rootfs"), agent)?;
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle))?;
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/usr/local/bin/lb-agent",
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--author",
        "lb-agent",
    ]))?;
    // The name `podman load` (ref.name) and `ctr images import` (io.containerd.image.name) give it.
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path)?)?;
    for manifest in index["manifests"].as_array_mut().context("index.json has no manifests")? {
        manifest["annotations"] = serde_json::json!({
            "org.opencontainers.image.ref.name": IMAGE,
            "io.containerd.image.name": format!("docker.io/library/{IMAGE}"),
        });
    }
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)?;
    let archive = archive_path();
    run(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&archive).arg("."))?;
    std::fs::remove_dir_all(&work).context("removing target/image")?;
    Ok(archive)
}
