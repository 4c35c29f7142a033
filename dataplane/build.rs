//! Builds the eBPF programs (ebpf/programs) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker; the ELF lands in OUT_DIR and is embedded by `loader`.

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/programs");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/Cargo.toml");
    println!(
        "cargo:rerun-if-changed={}/../ebpf/common/src",
        env!("CARGO_MANIFEST_DIR")
    );
    if which_bpf_linker().is_none() {
        anyhow::bail!(
            "bpf-linker is not on PATH; it builds Baton's eBPF programs. Run `cargo xtask setup` \
             (or `cargo install bpf-linker` against nightly's LLVM, see docs/TOOLCHAIN.md)"
        );
    }
    aya_build::build_ebpf(
        [Package {
            name: "baton-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|p| p.join("bpf-linker"))
        .find(|p| p.is_file())
}
