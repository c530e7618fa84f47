// Rebuild when bpf-linker changes (a new linker can change the object the agent embeds).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
