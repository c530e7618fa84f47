//! Builds the kernel programs (`lb-ebpf`, nightly, bpfel-unknown-none) and leaves the object in
//! `$OUT_DIR/lb-ebpf`, where `datapath::loader` embeds it: `lb-agent` is one self-contained binary.
//! `AYA_BUILD_SKIP=1` skips this for userspace-only checks (the agent then cannot load programs).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("lb-agent has no parent directory"))?;
    let ebpf_dir = workspace.join("lb-ebpf");
    let common_dir = workspace.join("lb-common");
    // The eBPF object also depends on the shared map definitions.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Leave an empty object so `include_bytes_aligned!` still compiles; loading it fails clearly.
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR not set")?);
        std::fs::write(out.join("lb-ebpf"), b"").context("writing placeholder eBPF object")?;
    }
    let root_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf([Package { name: "lb-ebpf", root_dir, ..Default::default() }], Toolchain::default())
        .context("building lb-ebpf (run `cargo xtask setup` to install the eBPF toolchain)")
}
