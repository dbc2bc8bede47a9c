//! Builds the kernel programs (tracer-ebpf's binary) for the bpfel target and leaves the
//! object in OUT_DIR, where src/loader.rs embeds it.
//!
//! The toolchain is the one `cargo xtask setup` links (see ../shared/TOOLCHAIN.md): on
//! Debian it wraps Debian's rustc, which ships a prebuilt core for bpfel-unknown-none;
//! elsewhere it is a nightly with rust-src. RSTTRACE_BPF_TOOLCHAIN overrides the name.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=RSTTRACE_BPF_TOOLCHAIN");
    let toolchain =
        std::env::var("RSTTRACE_BPF_TOOLCHAIN").unwrap_or_else(|_| "rsttrace-bpf".to_string());
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("tracer-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .with_context(|| {
        format!(
            "building the eBPF programs with toolchain {toolchain:?} failed; \
             run `cargo xtask setup` to install bpf-linker and link the toolchain"
        )
    })
}
