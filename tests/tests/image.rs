//! The container image `cargo xtask image` writes (`cargo xtask test` writes it first): an OCI
//! archive whose index names it as the DaemonSet does (`lb-agent:dev`), whose blobs match their
//! digests, whose config starts the agent, and whose unpacked root filesystem runs the agent and
//! the tools `cleanup --kube-proxy` needs, with nothing from the host.
use std::{path::PathBuf, process::Command};

use lb_tests::{guard::TempDir, require_root};
use serde_json::Value;

fn archive() -> PathBuf {
    let path = std::env::var_os("LB_IMAGE_ARCHIVE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/lb-agent-image.tar"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: `cargo xtask image` (or `cargo xtask test`) writes it",
        path.display()
    );
    path
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn the_image_archive_is_named_for_the_daemonset_and_runs_the_agent_from_its_own_root() {
    require_root();
    let dir = TempDir::new().expect("dir");
    let layout = dir.path.join("oci");
    std::fs::create_dir_all(&layout).expect("dir");
    sh(Command::new("tar").arg("-xf").arg(archive()).arg("-C").arg(&layout));
    let json =
        |p: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json") };
    assert_eq!(json(layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
    let index = json(layout.join("index.json"));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let daemonset =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml"))
            .expect("daemonset.yaml");
    let name = manifests[0]["annotations"]["org.opencontainers.image.ref.name"].as_str().expect("ref.name");
    assert!(daemonset.contains(&format!("image: {name}")), "the DaemonSet names the image {name}");
    assert_eq!(manifests[0]["annotations"]["io.containerd.image.name"], format!("docker.io/library/{name}"));
    // Every blob is what its digest says.
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let path = layout.join("blobs/sha256").join(hex);
        let sum = sh(Command::new("sha256sum").arg(&path));
        assert!(sum.starts_with(hex), "{digest} does not match its content: {sum}");
        path
    };
    let manifest = json(blob(manifests[0]["digest"].as_str().expect("digest")));
    assert_eq!(manifests[0]["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{index}");
    assert_eq!(manifest["schemaVersion"], 2, "{manifest}");
    let config = json(blob(manifest["config"]["digest"].as_str().expect("config")));
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("amd64")),
        "{config}"
    );
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/lb-agent"]), "{config}");
    let layers = manifest["layers"].as_array().expect("layers");
    assert!(
        !layers.is_empty() && layers.len() == config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len)
    );
    // The root filesystem, unpacked: the agent and the cleanup tools run from it alone.
    let rootfs = dir.path.join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("dir");
    for layer in layers {
        assert!(layer["mediaType"].as_str().is_some_and(|m| m.ends_with("tar+gzip")), "{layer}");
        sh(Command::new("tar")
            .arg("-xzf")
            .arg(blob(layer["digest"].as_str().expect("digest")))
            .arg("-C")
            .arg(&rootfs));
    }
    let run = |args: &[&str]| sh(Command::new("chroot").arg(&rootfs).args(args));
    let version = run(&["/usr/local/bin/lb-agent", "--version"]);
    assert_eq!(version.trim(), format!("lb-agent {}", env!("CARGO_PKG_VERSION")), "{version}");
    assert!(run(&["/usr/sbin/nft", "--version"]).contains("nftables"));
    assert!(run(&["/usr/sbin/iptables-nft-save", "--version"]).contains("nf_tables"));
    assert!(run(&["/usr/sbin/iptables-legacy-save", "--version"]).contains("legacy"));
    assert!(run(&["/usr/sbin/ip", "-V"]).contains("iproute2"));
}
